"""The demo's scenario end to end: 50 humans, then a high-frequency bot joins halfway.

Features are computed in streaming-sized batches, the forest is fitted on the early (clean)
rows, the threshold is calibrated on those rows at q=0.995, and the later rows are judged.
"""

from __future__ import annotations

import numpy as np
import pytest

from detector.explain import RobustProfile
from detector.features import DEFAULT_MAX_EVENTS, DEFAULT_WINDOW_S, FEATURE_NAMES, featurize
from detector.iforest import IsolationForestDetector
from detector.thresholds import QuantileThreshold
from tests.detector.scenario import GENESIS_TS, simulate

BOT_WARMUP = 5  # the bot's first txs have too little history to judge


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bot_alerts_and_humans_rarely_do(seed: int) -> None:
    sc = simulate(seed)
    states: dict = {}
    rows = []
    for b in range(0, len(sc.txs), 1024):
        new, X = featurize(
            states, sc.txs[b : b + 1024], window_s=DEFAULT_WINDOW_S, max_events=DEFAULT_MAX_EVENTS
        )
        states.update(new)
        rows.append(X)
    X = np.concatenate(rows)
    t = np.array([tx.timestamp for tx in sc.txs]) - GENESIS_TS
    train = t < sc.bot_start_s
    assert not sc.is_bot[train].any()

    det = IsolationForestDetector(seed=seed).fit(X[train])
    scores = det.score(X)
    alert = QuantileThreshold(q=0.995).fit(scores[train]).is_alert(scores)

    bot_rows = np.flatnonzero(sc.is_bot)[BOT_WARMUP:]
    human_later = ~train & ~sc.is_bot
    assert alert[bot_rows].mean() >= 0.9
    assert alert[human_later].mean() <= 0.02

    profile = RobustProfile(names=FEATURE_NAMES).fit(X[train])
    named = {name for name, _, _ in profile.explain(X[bot_rows[-1]], k=3)}
    assert named & {"gas_price_digits", "iat_cv", "rate_per_min", "recipient_distinct_ratio"}
