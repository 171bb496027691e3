"""Thresholds turn scores into alerts; explanations name the features behind an alert."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from detector.explain import RobustProfile, top_features
from detector.thresholds import QuantileThreshold, StreamingQuantile


def test_quantile_threshold_alerts_at_the_calibrated_rate() -> None:
    rng = np.random.default_rng(0)
    calib = rng.normal(size=100_000)
    thr = QuantileThreshold(q=0.995).fit(calib)
    assert thr.threshold_ == pytest.approx(np.quantile(calib, 0.995))
    assert thr.is_alert(rng.normal(size=100_000)).mean() == pytest.approx(0.005, abs=0.001)


def test_quantile_threshold_ignores_non_finite_and_nan_never_alerts() -> None:
    thr = QuantileThreshold(q=0.5).fit(np.array([1.0, 2.0, 3.0, np.nan, np.inf]))
    assert thr.threshold_ == 2.0
    assert thr.is_alert(np.array([np.nan, 2.0, 2.5])).tolist() == [False, False, True]
    assert pickle.loads(pickle.dumps(thr)).threshold_ == 2.0


@pytest.mark.parametrize("q", [0.0, 1.0, -0.1, 1.5])
def test_quantile_must_be_inside_zero_one(q: float) -> None:
    with pytest.raises(ValueError):
        QuantileThreshold(q=q)
    with pytest.raises(ValueError):
        StreamingQuantile(q=q)


def test_quantile_threshold_needs_scores() -> None:
    with pytest.raises(ValueError):
        QuantileThreshold(q=0.9).fit(np.array([np.nan]))


def test_streaming_quantile_is_exact_over_the_last_capacity_scores() -> None:
    rng = np.random.default_rng(1)
    sq = StreamingQuantile(q=0.99, capacity=1000)
    assert np.isnan(sq.threshold)
    seen = []
    for size in (10, 700, 2500, 3, 999):
        batch = rng.normal(size=size)
        seen.extend(batch.tolist())
        sq.learn(batch)
        assert sq.threshold == pytest.approx(np.quantile(seen[-1000:], 0.99), abs=0)
    sq.learn_one(float("nan"))
    assert len(sq) == 1000
    back = StreamingQuantile.from_dict(json.loads(json.dumps(sq.to_dict())))
    assert back.to_dict()["scores"] == seen[-1000:]
    assert back.threshold == sq.threshold


def test_robust_profile_names_the_shifted_feature_first() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(500, 4)) * [1.0, 10.0, 0.1, 1.0]
    prof = RobustProfile(names=["a", "b", "c", "d"]).fit(X)
    row = np.median(X, axis=0)
    row[2] += 1.0  # ten sigma on the small-scale feature
    row[1] += 30.0  # three sigma on the large-scale one
    top = prof.explain(row, k=2)
    assert [name for name, _, _ in top] == ["c", "b"]
    assert top[0][2] == pytest.approx(10.0, rel=0.2)
    assert top[0][1] == row[2]


def test_robust_profile_handles_constant_and_missing_features() -> None:
    X = np.zeros((100, 3))
    X[:, 0] = np.arange(100)
    X[:, 2] = np.nan  # never known
    prof = RobustProfile().fit(X)
    assert (prof.scale_[:2] > 0).all() and np.isnan(prof.scale_[2])
    top = prof.explain(np.array([50.0, 0.2, 7.0]), k=3)
    assert [name for name, _, _ in top] == ["f1", "f0"]  # a constant feature moving ranks first
    assert prof.robust_z(np.array([[np.nan, 0.0, 0.0]])).shape == (1, 3)


def test_top_features_validates_lengths_and_limits_k() -> None:
    med, scale = np.zeros(3), np.ones(3)
    out = top_features(np.array([1.0, -5.0, 2.0]), median=med, scale=scale, names="xyz", k=2)
    assert out == [("y", -5.0, -5.0), ("z", 2.0, 2.0)]
    with pytest.raises(ValueError):
        top_features(np.zeros(2), median=med, scale=scale, names="xyz")
