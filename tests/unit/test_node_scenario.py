"""The node half of `vigil eval scenario` on development seeds (never the held-out ones)."""

from __future__ import annotations

from pipelines.scenario_eval import NODE_FAULTS, node_rows, node_scenario

SOFT_ONLY = {"slow", "flaky", "offline"}  # no proof: alerts, never a slash proposal


def test_every_fault_is_alerted_and_only_proof_leads_to_slashing() -> None:
    nodes = [o for seed in (2, 3) for o in node_scenario(seed, honest=8, per_fault=4)]
    honest = [n for n in nodes if n.family == "honest"]
    assert sum(n.slash_proposals for n in honest) == 0
    assert not [n.node for n in honest if n.first_alert_s is not None]
    for n in nodes:
        if n.family in SOFT_ONLY:
            assert n.slash_proposals == 0, n
    rows = {r.family: r for r in node_rows(nodes)}
    assert set(rows) == set(NODE_FAULTS)
    for fam, row in rows.items():
        assert row.recall >= 0.75, (fam, row)
        assert row.ttd_median_s is not None


def test_fleet_scenario_is_deterministic() -> None:
    a = node_scenario(4, honest=4, per_fault=2, n_steps=30)
    b = node_scenario(4, honest=4, per_fault=2, n_steps=30)
    assert a == b
