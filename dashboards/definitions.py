"""The SOC's dashboards: what each panel shows and the SQL behind it.

Conventions the SQL follows (see `pipelines/storage/schema.py`):
* time series read the per-minute rollups (`*_1m`) with -Merge combinators and
  `$__timeInterval(minute)`, so a 30-day range stays cheap; their panels have a
  1-minute minimum interval;
* tables read ReplacingMergeTree tables with `FINAL` (replays never show twice) or
  `argMax(value, ts)` for "latest per key";
* every filter is `$__conditionalAll(col IN ($var), $var)`: All drops it entirely;
* tables are referenced without database: the data source's default database is used.
"""

from __future__ import annotations

from dashboards.model import Dashboard, Panel, Variable

F_CHAIN = "$__conditionalAll(toString(chain_id) IN ($chain), $chain)"
F_CATEGORY = "$__conditionalAll(category IN ($category), $category)"
F_SEVERITY = "$__conditionalAll(severity IN ($severity), $severity)"
F_NODE = "$__conditionalAll(node_id IN ($node), $node)"
SEVERITY_ORDER = (
    "multiIf(severity = 'critical', 0, severity = 'high', 1, severity = 'medium', 2, 3)"
)

VARIABLES = (
    Variable(
        "chain",
        "Chain",
        sql="SELECT DISTINCT toString(chain_id) AS chain FROM tx_1m ORDER BY chain",
    ),
    Variable("node", "Node", sql="SELECT DISTINCT node_id FROM telemetry_1m ORDER BY node_id"),
    Variable(
        "category",
        "Category",
        sql="SELECT DISTINCT category FROM alerts_1m ORDER BY category",
    ),
    Variable("severity", "Severity", options=("critical", "high", "medium", "low")),
)

_ALERT_FILTERS = f"{F_CHAIN}\n  AND {F_CATEGORY}\n  AND {F_SEVERITY}"


def soc_overview() -> Dashboard:
    return Dashboard(
        uid="vigil-soc-overview",
        title="Vigil / SOC overview",
        description="Alerts, incidents, enforcement and traffic at a glance.",
        available_variables=VARIABLES,
        panels=(
            Panel(
                "Alerts",
                "stat",
                f"""SELECT uniqExactMerge(alerts) AS alerts
FROM alerts_1m
WHERE $__timeFilter(minute)
  AND {_ALERT_FILTERS}""",
                "Alerts raised in the time range.",
                width=5,
                height=4,
                key=True,
                thresholds=((1, "orange"), (50, "red")),
            ),
            Panel(
                "Flagged entities",
                "stat",
                f"""SELECT uniqExactMerge(entities) AS entities
FROM alerts_1m
WHERE $__timeFilter(minute)
  AND {_ALERT_FILTERS}""",
                "Distinct senders or nodes with at least one alert.",
                width=5,
                height=4,
                key=True,
                thresholds=((1, "orange"),),
            ),
            Panel(
                "Open incidents",
                "stat",
                f"""SELECT count() AS open_incidents
FROM incidents FINAL
WHERE status != 'resolved'
  AND $__timeFilter(last_seen)
  AND {_ALERT_FILTERS}""",
                "Incidents active in the range and not resolved.",
                width=5,
                height=4,
                key=True,
                thresholds=((1, "orange"), (10, "red")),
            ),
            Panel(
                "Enforcement actions",
                "stat",
                f"""SELECT count() AS actions
FROM actions FINAL
WHERE $__timeFilter(created_at)
  AND {F_CHAIN}""",
                "On-chain actions (throttles, slash proposals) sent or found in the range.",
                width=4,
                height=4,
                key=True,
            ),
            Panel(
                "Transactions",
                "stat",
                f"""SELECT uniqMerge(txs) AS transactions
FROM tx_1m
WHERE $__timeFilter(minute)
  AND {F_CHAIN}""",
                "Transactions ingested in the range.",
                width=5,
                height=4,
                key=True,
            ),
            Panel(
                "Alerts by severity",
                "timeseries",
                f"""SELECT $__timeInterval(minute) AS t, severity, uniqExactMerge(alerts) AS alerts
FROM alerts_1m
WHERE $__timeFilter(minute)
  AND {_ALERT_FILTERS}
GROUP BY t, severity
ORDER BY t""",
                "Alerts per interval, one series per severity.",
                key=True,
                min_interval="1m",
                stacked=True,
            ),
            Panel(
                "Transactions and senders",
                "timeseries",
                f"""SELECT
    $__timeInterval(minute) AS t,
    uniqMerge(txs) AS transactions,
    uniqMerge(senders) AS senders,
    uniqIfMerge(failed) AS failed
FROM tx_1m
WHERE $__timeFilter(minute)
  AND {F_CHAIN}
GROUP BY t
ORDER BY t""",
                "Ingested transactions, active senders and failed transactions per interval.",
                key=True,
                min_interval="1m",
            ),
            Panel(
                "Alerts by category",
                "piechart",
                f"""SELECT category, uniqExactMerge(alerts) AS alerts
FROM alerts_1m
WHERE $__timeFilter(minute)
  AND {_ALERT_FILTERS}
GROUP BY category
ORDER BY alerts DESC""",
                "Share of alerts per category.",
                columns=("category", "alerts"),
                width=8,
                height=9,
            ),
            Panel(
                "Latest alerts",
                "table",
                f"""SELECT
    created_at AS time,
    severity,
    category,
    detector,
    entity,
    round(score, 4) AS score,
    round(threshold, 4) AS threshold,
    evidence_hash,
    tx_hash
FROM alerts FINAL
WHERE $__timeFilter(created_at)
  AND {_ALERT_FILTERS}
ORDER BY created_at DESC
LIMIT 100""",
                "Newest alerts with their score, threshold and evidence hash.",
                columns=(
                    "time",
                    "severity",
                    "category",
                    "detector",
                    "entity",
                    "score",
                    "threshold",
                    "evidence_hash",
                    "tx_hash",
                ),
                width=16,
                height=9,
                key=True,
            ),
            Panel(
                "Open incidents",
                "table",
                f"""SELECT
    incident_id,
    entity,
    category,
    severity,
    status,
    first_seen,
    last_seen,
    alert_count AS alerts,
    arrayStringConcat(detectors, ', ') AS detectors,
    evidence_hash
FROM incidents FINAL
WHERE status != 'resolved'
  AND $__timeFilter(last_seen)
  AND {_ALERT_FILTERS}
ORDER BY {SEVERITY_ORDER}, last_seen DESC
LIMIT 100""",
                "Unresolved incidents, most severe first.",
                columns=(
                    "incident_id",
                    "entity",
                    "category",
                    "severity",
                    "status",
                    "first_seen",
                    "last_seen",
                    "alerts",
                    "detectors",
                    "evidence_hash",
                ),
                width=24,
                height=9,
                key=True,
            ),
        ),
    )


def bots_and_sybils() -> Dashboard:
    return Dashboard(
        uid="vigil-bots-sybils",
        title="Vigil / Bots and sybils",
        description="Transaction-side detection: scores, flagged senders, funding fan-out.",
        available_variables=VARIABLES,
        panels=(
            Panel(
                "Alerts by category",
                "timeseries",
                f"""SELECT $__timeInterval(minute) AS t, category, uniqExactMerge(alerts) AS alerts
FROM alerts_1m
WHERE $__timeFilter(minute)
  AND {_ALERT_FILTERS}
GROUP BY t, category
ORDER BY t""",
                "Alerts per interval, one series per category (bot, sybil, ...).",
                min_interval="1m",
                stacked=True,
                key=True,
            ),
            Panel(
                "Anomaly score vs threshold",
                "timeseries",
                """SELECT
    $__timeInterval(block_time) AS t,
    quantile(0.5)(score) AS p50,
    quantile(0.99)(score) AS p99,
    max(score) AS max,
    max(threshold) AS threshold
FROM scores
WHERE $__timeFilter(block_time) AND NOT startsWith(model_version, 'tx_sequence:')
GROUP BY t
ORDER BY t""",
                "Isolation-forest score quantiles per interval against the calibrated threshold.",
                min_interval="1m",
                decimals=3,
            ),
            Panel(
                "Most alerted senders",
                "table",
                f"""SELECT
    entity,
    uniqExact(alert_id) AS alerts,
    arrayStringConcat(arraySort(groupUniqArray(category)), ', ') AS categories,
    round(max(score), 4) AS max_score,
    min(created_at) AS first_alert,
    max(created_at) AS last_alert
FROM alerts FINAL
WHERE $__timeFilter(created_at)
  AND {_ALERT_FILTERS}
GROUP BY entity
ORDER BY alerts DESC, max_score DESC
LIMIT 50""",
                "Entities with the most alerts in the range.",
                columns=(
                    "entity",
                    "alerts",
                    "categories",
                    "max_score",
                    "first_alert",
                    "last_alert",
                ),
                key=True,
            ),
            Panel(
                "Busiest senders",
                "table",
                f"""SELECT
    sender,
    count() AS txs,
    round(count() / greatest(1, dateDiff('second', min(block_time), max(block_time)) / 60), 2)
        AS tx_per_min,
    uniqExact(to_address) AS counterparties,
    uniqExact(selector) AS selectors,
    countIf(status = 0) AS failed,
    sender IN (SELECT entity FROM alerts WHERE $__timeFilter(created_at)) AS alerted
FROM transactions FINAL
WHERE $__timeFilter(block_time)
  AND is_deleted = 0
  AND {F_CHAIN}
GROUP BY sender
ORDER BY txs DESC
LIMIT 50""",
                "Senders by transaction count, with rate, diversity and whether they were alerted.",
                columns=(
                    "sender",
                    "txs",
                    "tx_per_min",
                    "counterparties",
                    "selectors",
                    "failed",
                    "alerted",
                ),
            ),
            Panel(
                "Funding fan-out",
                "table",
                f"""SELECT
    sender AS funder,
    uniqExact(to_address) AS funded_senders,
    round(toFloat64(sum(value_wei)) / 1e18, 4) AS eth_sent,
    min(block_time) AS first_funding,
    max(block_time) AS last_funding
FROM transactions FINAL
WHERE $__timeFilter(block_time)
  AND is_deleted = 0
  AND value_wei > 0
  AND {F_CHAIN}
  AND lower(to_address) IN (
      SELECT DISTINCT lower(sender) FROM transactions WHERE $__timeFilter(block_time)
  )
GROUP BY funder
HAVING funded_senders >= 3
ORDER BY funded_senders DESC
LIMIT 50""",
                "Accounts that funded several addresses which then transacted themselves: "
                "the shape of a sybil farm.",
                columns=(
                    "funder",
                    "funded_senders",
                    "eth_sent",
                    "first_funding",
                    "last_funding",
                ),
            ),
            Panel(
                "Alerts by detector",
                "bargauge",
                f"""SELECT detector, uniqExactMerge(alerts) AS alerts
FROM alerts_1m
WHERE $__timeFilter(minute)
  AND {_ALERT_FILTERS}
GROUP BY detector
ORDER BY alerts DESC""",
                "Which detectors raise the alerts.",
                columns=("detector", "alerts"),
            ),
        ),
    )


def node_health() -> Dashboard:
    p95 = "round(quantilesIfMerge(0.5, 0.95, 0.99)(latency_ms)[2], 2)"
    return Dashboard(
        uid="vigil-nodes",
        title="Vigil / Node health and reputation",
        description="Inference nodes: latency, throughput, errors, spot checks, reputation.",
        available_variables=VARIABLES,
        panels=(
            Panel(
                "Batch latency p95",
                "timeseries",
                f"""SELECT $__timeInterval(minute) AS t, node_id, {p95} AS p95_ms
FROM telemetry_1m
WHERE $__timeFilter(minute)
  AND {F_NODE}
GROUP BY t, node_id
ORDER BY t""",
                "95th percentile batch latency per node.",
                unit="ms",
                min_interval="1m",
                key=True,
            ),
            Panel(
                "Tokens per second",
                "timeseries",
                f"""SELECT
    $__timeInterval(minute) AS t,
    node_id,
    sum(tokens) / $__interval_s AS tokens_per_s
FROM telemetry_1m
WHERE $__timeFilter(minute)
  AND {F_NODE}
GROUP BY t, node_id
ORDER BY t""",
                "Generated tokens per second per node (what the node will claim on chain).",
                min_interval="1m",
            ),
            Panel(
                "Errors",
                "timeseries",
                f"""SELECT $__timeInterval(minute) AS t, node_id, sum(errors) AS errors
FROM telemetry_1m
WHERE $__timeFilter(minute)
  AND {F_NODE}
GROUP BY t, node_id
ORDER BY t""",
                "Failed requests per interval and node.",
                min_interval="1m",
            ),
            Panel(
                "GPU utilisation",
                "timeseries",
                f"""SELECT $__timeInterval(minute) AS t, node_id, avgMerge(gpu_util) AS gpu_util
FROM telemetry_1m
WHERE $__timeFilter(minute)
  AND {F_NODE}
GROUP BY t, node_id
ORDER BY t""",
                "Mean GPU utilisation per node; busy GPUs with no tokens are suspicious.",
                unit="percentunit",
                min_interval="1m",
            ),
            Panel(
                "Node status",
                "table",
                f"""SELECT
    n.node_id AS node_id,
    n.last_seen AS last_seen,
    dateDiff('second', n.last_seen, $__toTime) AS heartbeat_age_s,
    n.p95_ms AS p95_ms,
    n.error_rate AS error_rate,
    c.checks AS spot_checks,
    c.pass_rate AS spot_check_pass_rate,
    r.score AS reputation
FROM
(
    SELECT
        node_id,
        toDateTime64(max(last_seen), 3, 'UTC') AS last_seen,
        {p95} AS p95_ms,
        round(sum(errors) / greatest(1, sum(batches)), 4) AS error_rate
    FROM telemetry_1m
    WHERE $__timeFilter(minute)
      AND {F_NODE}
    GROUP BY node_id
) AS n
LEFT JOIN
(
    SELECT node_id, count() AS checks, round(avg(passed), 4) AS pass_rate
    FROM challenges FINAL
    WHERE $__timeFilter(ts)
    GROUP BY node_id
) AS c ON c.node_id = n.node_id
LEFT JOIN
(
    SELECT node_id, round(argMax(score, ts), 4) AS score
    FROM reputation
    WHERE ts <= $__toTime
    GROUP BY node_id
) AS r ON r.node_id = n.node_id
ORDER BY reputation ASC, node_id""",
                "Per node: last heartbeat, p95 latency, error rate, spot checks, reputation.",
                columns=(
                    "node_id",
                    "last_seen",
                    "heartbeat_age_s",
                    "p95_ms",
                    "error_rate",
                    "spot_checks",
                    "spot_check_pass_rate",
                    "reputation",
                ),
                width=24,
                key=True,
            ),
            Panel(
                "Reputation",
                "timeseries",
                f"""SELECT $__timeInterval(ts) AS t, node_id, argMax(score, ts) AS score
FROM reputation
WHERE $__timeFilter(ts)
  AND {F_NODE}
GROUP BY t, node_id
ORDER BY t""",
                "Reputation score per node over time (1 = clean).",
                decimals=3,
                key=True,
            ),
            Panel(
                "Reputation components (latest)",
                "table",
                f"""SELECT node_id, component, round(value, 4) AS value
FROM
(
    SELECT node_id, argMax(components, ts) AS c
    FROM reputation
    WHERE ts <= $__toTime
      AND {F_NODE}
    GROUP BY node_id
)
ARRAY JOIN mapKeys(c) AS component, mapValues(c) AS value
ORDER BY node_id, component""",
                "What each node's current score is made of: what an operator can contest.",
                columns=("node_id", "component", "value"),
            ),
            Panel(
                "Spot checks",
                "table",
                f"""SELECT
    node_id,
    count() AS checks,
    countIf(passed = 0) AS failed,
    round(avg(cosine), 4) AS mean_cosine,
    maxIfOrNull(ts, passed = 0) AS last_failure
FROM challenges FINAL
WHERE $__timeFilter(ts)
  AND {F_NODE}
GROUP BY node_id
ORDER BY failed DESC, node_id""",
                "Spot-check challenges per node: failures and output similarity.",
                columns=("node_id", "checks", "failed", "mean_cosine", "last_failure"),
                width=12,
            ),
        ),
    )


def enforcement() -> Dashboard:
    return Dashboard(
        uid="vigil-enforcement",
        title="Vigil / Enforcement and governance",
        description="What was done about alerts, how fast, and what waits for governance.",
        available_variables=VARIABLES,
        panels=(
            Panel(
                "Actions by kind",
                "timeseries",
                f"""SELECT $__timeInterval(created_at) AS t, kind, count() AS actions
FROM actions FINAL
WHERE $__timeFilter(created_at)
  AND {F_CHAIN}
GROUP BY t, kind
ORDER BY t""",
                "Enforcement actions per interval and kind.",
                key=True,
            ),
            Panel(
                "Actions by status",
                "bargauge",
                f"""SELECT status, count() AS actions
FROM actions FINAL
WHERE $__timeFilter(created_at)
  AND {F_CHAIN}
GROUP BY status
ORDER BY actions DESC""",
                "mined, already_onchain (recovered after a crash), dry_run, ...",
                columns=("status", "actions"),
                width=6,
            ),
            Panel(
                "Median time to enforce",
                "stat",
                """SELECT quantile(0.5)(dateDiff('second', al.created_at, a.created_at)) AS seconds
FROM actions AS a FINAL
INNER JOIN
(
    SELECT evidence_hash, min(created_at) AS created_at
    FROM alerts FINAL
    GROUP BY evidence_hash
) AS al ON al.evidence_hash = a.evidence_hash
WHERE $__timeFilter(a.created_at)
  AND $__conditionalAll(toString(a.chain_id) IN ($chain), $chain)""",
                "Seconds from the alert to its on-chain action (median).",
                unit="s",
                width=6,
                key=True,
                thresholds=((30, "orange"), (120, "red")),
            ),
            Panel(
                "Enforcement log",
                "table",
                """SELECT
    a.created_at AS time,
    a.kind AS kind,
    a.target AS target,
    a.status AS status,
    al.category AS category,
    al.severity AS severity,
    a.tx_hash AS tx_hash,
    a.block_number AS block_number,
    a.evidence_hash AS evidence_hash
FROM actions AS a FINAL
LEFT JOIN
(
    SELECT evidence_hash, any(category) AS category, any(severity) AS severity
    FROM alerts FINAL
    GROUP BY evidence_hash
) AS al ON al.evidence_hash = a.evidence_hash
WHERE $__timeFilter(a.created_at)
  AND $__conditionalAll(toString(a.chain_id) IN ($chain), $chain)
ORDER BY time DESC
LIMIT 200""",
                "Every action with its transaction and the evidence it cites.",
                columns=(
                    "time",
                    "kind",
                    "target",
                    "status",
                    "category",
                    "severity",
                    "tx_hash",
                    "block_number",
                    "evidence_hash",
                ),
                width=24,
                key=True,
            ),
            Panel(
                "Governance queue",
                "table",
                """SELECT
    i.incident_id AS incident_id,
    i.entity AS entity,
    i.category AS category,
    i.severity AS severity,
    i.status AS status,
    i.alert_count AS alerts,
    i.first_seen AS first_seen,
    i.last_seen AS last_seen,
    x.actions AS actions,
    i.evidence_hash AS evidence_hash
FROM incidents AS i FINAL
LEFT JOIN
(
    SELECT evidence_hash, arrayStringConcat(arraySort(groupUniqArray(kind)), ', ') AS actions
    FROM actions FINAL
    GROUP BY evidence_hash
) AS x ON x.evidence_hash = i.evidence_hash
WHERE i.status IN ('escalated', 'contested')
  AND $__timeFilter(i.last_seen)
  AND $__conditionalAll(i.category IN ($category), $category)
  AND $__conditionalAll(i.severity IN ($severity), $severity)
ORDER BY i.last_seen DESC
LIMIT 100""",
                "Incidents escalated to governance (slash proposals) or contested by the operator.",
                columns=(
                    "incident_id",
                    "entity",
                    "category",
                    "severity",
                    "status",
                    "alerts",
                    "first_seen",
                    "last_seen",
                    "actions",
                    "evidence_hash",
                ),
                width=24,
                key=True,
            ),
            Panel(
                "Incidents opened",
                "timeseries",
                f"""SELECT $__timeInterval(first_seen) AS t, severity, count() AS incidents
FROM incidents FINAL
WHERE $__timeFilter(first_seen)
  AND {_ALERT_FILTERS}
GROUP BY t, severity
ORDER BY t""",
                "New incidents per interval by severity.",
                stacked=True,
                width=24,
            ),
        ),
    )


def pipeline_health() -> Dashboard:
    def metric_series(metric: str, agg: str, alias: str) -> str:
        return f"""SELECT $__timeInterval(minute) AS t, component, {agg} AS {alias}
FROM pipeline_health_1m
WHERE $__timeFilter(minute)
  AND metric = '{metric}'
GROUP BY t, component
ORDER BY t"""

    return Dashboard(
        uid="vigil-pipeline",
        title="Vigil / Pipeline health",
        description="Is Vigil itself keeping up: lag, throughput, dead letters, errors.",
        available_variables=VARIABLES,
        panels=(
            Panel(
                "Head lag (latest)",
                "stat",
                """SELECT argMaxMerge(value_last) AS head_lag_blocks
FROM pipeline_health_1m
WHERE $__timeFilter(minute)
  AND metric = 'head_lag_blocks'""",
                "Blocks between the chain head and the follower's last published block.",
                width=6,
                height=4,
                key=True,
                thresholds=((5, "orange"), (50, "red")),
            ),
            Panel(
                "Dead letters",
                "stat",
                """SELECT count() AS dead_letters
FROM dlq FINAL
WHERE $__timeFilter(received_at)""",
                "Messages routed to a dead-letter topic in the range.",
                width=6,
                height=4,
                key=True,
                thresholds=((1, "orange"), (100, "red")),
            ),
            Panel(
                "Errors",
                "stat",
                """SELECT sum(value_sum) AS errors
FROM pipeline_health_1m
WHERE $__timeFilter(minute)
  AND metric = 'errors'""",
                "Processing errors reported by all components in the range.",
                width=6,
                height=4,
                thresholds=((1, "orange"), (100, "red")),
            ),
            Panel(
                "Writer spool (latest)",
                "stat",
                """SELECT argMaxMerge(value_last) AS spooled_batches
FROM pipeline_health_1m
WHERE $__timeFilter(minute)
  AND component = 'writer'
  AND metric = 'spool_batches'""",
                "Batches waiting on disk because ClickHouse did not take them.",
                width=6,
                height=4,
                thresholds=((1, "orange"), (1000, "red")),
            ),
            Panel(
                "Head lag (blocks)",
                "timeseries",
                metric_series("head_lag_blocks", "toFloat64(max(value_max))", "lag_blocks"),
                "Worst head lag per interval and follower.",
                min_interval="1m",
                key=True,
            ),
            Panel(
                "Consumer lag (seconds)",
                "timeseries",
                metric_series("consumer_lag_s", "toFloat64(max(value_max))", "lag_s"),
                "Age of the oldest unprocessed event per consumer.",
                unit="s",
                min_interval="1m",
            ),
            Panel(
                "Throughput",
                "timeseries",
                metric_series("events_per_s", "avgMerge(value_avg)", "events_per_s"),
                "Events processed per second per component.",
                min_interval="1m",
                key=True,
            ),
            Panel(
                "Errors per interval",
                "timeseries",
                metric_series("errors", "sum(value_sum)", "errors"),
                "Processing errors per interval and component.",
                min_interval="1m",
            ),
            Panel(
                "Dead letters by topic",
                "timeseries",
                """SELECT $__timeInterval(received_at) AS t, topic, count() AS dead_letters
FROM dlq FINAL
WHERE $__timeFilter(received_at)
GROUP BY t, topic
ORDER BY t""",
                "Dead letters per interval and source topic.",
                key=True,
            ),
            Panel(
                "Data freshness",
                "table",
                """SELECT source, latest, dateDiff('second', latest, now64(3)) AS age_s
FROM
(
    SELECT 'transactions' AS source, max(block_time) AS latest FROM transactions
    UNION ALL SELECT 'scores', max(block_time) FROM scores
    UNION ALL SELECT 'alerts', max(created_at) FROM alerts
    UNION ALL SELECT 'telemetry', max(ts) FROM telemetry
    UNION ALL SELECT 'pipeline_health', max(ts) FROM pipeline_health
)
ORDER BY age_s DESC""",
                "Newest row per table: a stalled writer shows here first.",
                columns=("source", "latest", "age_s"),
            ),
            Panel(
                "Latest dead letters",
                "table",
                """SELECT
    received_at,
    topic,
    partition,
    offset,
    reason,
    substring(raw, 1, 120) AS raw_head
FROM dlq FINAL
WHERE $__timeFilter(received_at)
ORDER BY received_at DESC
LIMIT 100""",
                "Why messages were dead-lettered, with the start of the raw payload.",
                columns=("received_at", "topic", "partition", "offset", "reason", "raw_head"),
                width=24,
            ),
        ),
    )


def all_dashboards() -> list[Dashboard]:
    """Every dashboard, in menu order."""
    return [soc_overview(), bots_and_sybils(), node_health(), enforcement(), pipeline_health()]
