"""Contract and behaviour of the streaming telemetry detector (detector.telemetry)."""

from __future__ import annotations

import inspect
import math
import pickle

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.telemetry import MultiTelemetryDetector, TelemetryDetector

ALERT = TelemetryDetector().alarm


def _stream(det: TelemetryDetector, xs: np.ndarray) -> np.ndarray:
    return np.array([det.update(x) for x in xs.tolist()])


def _daily(n: int, seed: int = 0) -> np.ndarray:
    """5-minute telemetry with a daily cycle and Gaussian noise (sd 1)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return 50.0 + 10.0 * np.sin(2 * np.pi * t / 288) + rng.normal(0.0, 1.0, n)


def test_constructor_is_keyword_only_and_stores_parameters_only() -> None:
    params = list(inspect.signature(TelemetryDetector.__init__).parameters.values())[1:]
    assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    det = TelemetryDetector(refractory=5)
    assert vars(det) == {p.name: getattr(det, p.name) for p in params}
    assert not [a for a in vars(det) if a.endswith("_")]
    det.update(1.0)
    assert [a for a in vars(det) if a.endswith("_")], "learned state appears on the first update"


def test_scores_in_unit_interval_and_input_not_mutated() -> None:
    xs = _daily(1500)
    xs[700] = 500.0
    before = xs.copy()
    s = _stream(TelemetryDetector(), xs)
    assert np.array_equal(xs, before)
    assert s.dtype == np.float64 and np.isfinite(s).all()
    assert s.min() >= 0.0 and s.max() <= 1.0


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-1e100, max_value=1e100),  # squares must stay finite
            st.sampled_from([math.nan, math.inf, -math.inf]),
        ),
        min_size=1,
        max_size=400,
    )
)
def test_any_input_gives_scores_in_unit_interval(values: list[float]) -> None:
    det = TelemetryDetector(shape_scales=(2, 4), embed=4, min_count=5, local_length=10)
    for x in values:
        s = det.update(x)
        assert 0.0 <= s <= 1.0


def test_pickle_round_trip_mid_stream_gives_identical_scores() -> None:
    xs = _daily(3000, seed=3)
    xs[2500] += 30.0
    det = TelemetryDetector()
    _stream(det, xs[:1700])
    clone = pickle.loads(pickle.dumps(det))
    np.testing.assert_array_equal(_stream(det, xs[1700:]), _stream(clone, xs[1700:]))


def test_deterministic() -> None:
    xs = _daily(2500, seed=5)
    np.testing.assert_array_equal(
        _stream(TelemetryDetector(), xs), _stream(TelemetryDetector(), xs)
    )


def test_non_finite_values_score_zero_and_are_skipped() -> None:
    xs = _daily(2000, seed=1)
    holes = xs.copy()
    gaps = [300, 301, 1200, 1750]
    holes[gaps[:2]] = np.nan
    holes[gaps[2]] = np.inf
    holes[gaps[3]] = -np.inf
    s = _stream(TelemetryDetector(), holes)
    assert (s[gaps] == 0.0).all()
    # skipping a missing sample leaves the detector exactly where the clean stream has it
    clean = _stream(TelemetryDetector(), np.delete(holes, gaps))
    np.testing.assert_array_equal(np.delete(s, gaps), clean)


def test_constant_series_scores_zero() -> None:
    assert not _stream(TelemetryDetector(), np.full(1500, 45.0)).any()
    square = np.tile(np.r_[np.full(100, 20.0), np.full(100, 80.0)], 10)
    assert (_stream(TelemetryDetector(), square)[600:] < ALERT).all()


def test_spike_is_detected_at_onset() -> None:
    xs = _daily(3000, seed=2)
    xs[2000] += 25.0
    s = _stream(TelemetryDetector(), xs)
    assert s[2000] >= ALERT


def test_level_shift_is_detected_soon_after_onset() -> None:
    xs = _daily(3000, seed=4)
    xs[2000:] += 6.0
    s = _stream(TelemetryDetector(), xs)
    first = 2000 + int(np.argmax(s[2000:] >= ALERT))
    assert s[first] >= ALERT and first - 2000 <= 30


def test_stationary_noise_rarely_alerts() -> None:
    for seed in range(3):
        rng = np.random.default_rng(seed)
        s = _stream(TelemetryDetector(), rng.normal(10.0, 2.0, 5000))
        assert (s[1000:] >= ALERT).sum() <= 10  # < 0.25 % of rows: new all-time extremes
    s = _stream(TelemetryDetector(), _daily(4000, seed=9))
    assert (s[1000:] >= ALERT).sum() <= 3


def test_refractory_period_gives_one_alert_per_event() -> None:
    xs = _daily(3000, seed=6)
    xs[2000:2005] += 40.0
    s = _stream(TelemetryDetector(refractory=20), xs)
    assert s[2000] >= ALERT and not s[2001:2021].any()


def test_last_source_names_the_signal() -> None:
    xs = _daily(2500, seed=7)
    xs[2200] += 40.0
    det = TelemetryDetector()
    _stream(det, xs[:2200])
    assert det.update(float(xs[2200])) >= ALERT
    assert det.last_source_ == "level:1"


def test_multivariate_wrapper_takes_the_max_and_tolerates_missing_metrics() -> None:
    lat, gpu = _daily(2500, seed=10), _daily(2500, seed=11)
    gpu[2100] += 40.0
    multi = MultiTelemetryDetector(metrics=("latency", "gpu"))
    singles = {"latency": TelemetryDetector(), "gpu": TelemetryDetector()}
    for i in range(2500):
        row = {"latency": float(lat[i]), "gpu": float(gpu[i])}
        if i == 50:
            del row["gpu"]  # a missing metric scores 0 for that row and is skipped
        frozen = dict(row)
        got = multi.update(row)
        assert row == frozen
        want = {m: singles[m].update(row.get(m, math.nan)) for m in singles}
        assert multi.last_scores_ == want and got == max(want.values())
    assert multi.last_scores_ is not None
    clone = pickle.loads(pickle.dumps(multi))
    assert clone.update({"latency": 50.0, "gpu": 50.0}) == multi.update(
        {"latency": 50.0, "gpu": 50.0}
    )
