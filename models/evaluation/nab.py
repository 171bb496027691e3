"""Numenta Anomaly Benchmark (NAB) scoring, reimplemented in numpy.

Follows NAB v1.1 (`nab/sweeper.py`, `nab/scorer.py`, `nab/optimizer.py`, `nab/runner.py`):

* Probationary period: the first ``min(floor(0.15 * N), 750)`` rows of a file are not
  scored at all (neither detections nor misses).
* A row is a detection when ``anomaly_score >= threshold`` (NaN never detects).
* Window ``[L, R]`` (row indices, inclusive; width ``W = R - L + 1``): only the earliest
  detection counts, credited ``A_TP * s(-(R - i + 1) / W) / s(-1)`` with
  ``s(y) = 2 / (1 + exp(5 y)) - 1`` and ``s(y) = -1`` for ``y > 3``. A window without a
  detection costs ``-A_FN``. Later detections in the same window neither add nor cost.
* A detection outside every window costs ``A_FP * s(|i - R_prev| / (W_prev - 1))`` where
  ``R_prev``/``W_prev`` belong to the closest window that ended before it, or ``-A_FP``
  when no window has ended yet.
* Normalised score ``100 (S - S_null) / (S_perfect - S_null)`` over the whole corpus with
  ``S_perfect = A_TP * windows`` and ``S_null = -A_FN * windows`` (the null detector).
* Threshold optimisation: one threshold per detector per profile, swept over every
  distinct anomaly score in the corpus (NAB's sweeper); ties keep the highest threshold.

Window bounds are timestamps; NAB walks the rows in file order, enters a window at the
first row whose timestamp equals the start and leaves it at the first row equal to the end
(NAB files are not spotless: one realAdExchange file repeats a timestamp and
machine_temperature_system_failure has one row out of order, so rows are never re-sorted).
The same rule is used here; a bound that is not a row timestamp (never the case in NAB's
label files) falls back to the first row at/after the start and the last row at/before
the end.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS = 750  # NAB: probationPercent * 5000


@dataclass(frozen=True)
class Profile:
    """NAB application profile: weights of a true positive, false positive, false negative."""

    name: str
    tp: float
    fp: float
    fn: float


PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", 1.0, 0.11, 1.0),
    "reward_low_FP": Profile("reward_low_FP", 1.0, 0.22, 1.0),
    "reward_low_FN": Profile("reward_low_FN", 1.0, 0.11, 2.0),
}
_ALIASES = {"reward_low_FP_rate": "reward_low_FP", "reward_low_FN_rate": "reward_low_FN"}


def get_profile(profile: str | Profile) -> Profile:
    """A Profile from its name (NAB's `*_rate` names accepted) or the Profile itself."""
    if isinstance(profile, Profile):
        return profile
    name = _ALIASES.get(profile, profile)
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown NAB profile {profile!r}; known: {sorted(PROFILES)}") from None


def scaled_sigmoid(y: float) -> float:
    """NAB's scaledSigmoid: 2 / (1 + exp(5 y)) - 1, and -1 beyond y > 3."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


_MAX_TP = scaled_sigmoid(-1.0)


def probation_length(n_rows: int) -> int:
    """Rows at the start of a file that are never scored."""
    return int(min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_MAX_ROWS))


@dataclass(frozen=True)
class DataFile:
    """One NAB series with its windows resolved to row indices and per-row score weights."""

    relative_path: str  # e.g. "realKnownCause/nyc_taxi.csv"
    timestamps: list[str]  # as written in the data file
    values: np.ndarray
    windows: list[tuple[int, int]]  # (first row, last row), inclusive, in time order
    probation: int
    # Per-row, profile-independent parts of NAB's sweep score:
    window_id: np.ndarray = field(repr=False)  # window index of the row, -1 outside
    tp_weight: np.ndarray = field(repr=False)  # s(position)/s(-1) inside windows, else 0
    fp_weight: np.ndarray = field(repr=False)  # s(distance past last window) outside, else 0

    @property
    def n_rows(self) -> int:
        return len(self.timestamps)

    @property
    def labels(self) -> np.ndarray:
        """1 inside an anomaly window, 0 elsewhere (NAB's `label` column)."""
        return (self.window_id >= 0).astype(np.int64)


@dataclass(frozen=True)
class Corpus:
    files: dict[str, DataFile]

    @property
    def n_windows(self) -> int:
        return sum(len(f.windows) for f in self.files.values())


def _row_weights(
    n: int, windows: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    window_id = np.full(n, -1, dtype=np.int64)
    tp_w = np.zeros(n)
    fp_w = np.full(n, -1.0)  # before the first window: -A_FP flat
    idx = np.arange(n)
    for k, (lo, hi) in enumerate(windows):
        width = hi - lo + 1
        window_id[lo : hi + 1] = k
        pos = -(hi - idx[lo : hi + 1] + 1) / width
        tp_w[lo : hi + 1] = [scaled_sigmoid(p) / _MAX_TP for p in pos]
        fp_w[lo : hi + 1] = 0.0
        end = windows[k + 1][0] if k + 1 < len(windows) else n
        after = idx[hi + 1 : end]
        if width > 1:
            fp_w[hi + 1 : end] = [scaled_sigmoid(abs(i - hi) / (width - 1)) for i in after]
        else:  # NAB divides by zero here; treat as far past the window
            fp_w[hi + 1 : end] = -1.0
    return window_id, tp_w, fp_w


def _parse_ts(ts: str) -> int:
    """Timestamp as integer microseconds (NAB writes `YYYY-MM-DD HH:MM:SS[.ffffff]`)."""
    return int(np.datetime64(ts.strip().replace(" ", "T"), "us").astype(np.int64))


def make_data_file(
    relative_path: str,
    timestamps: list[str],
    values: np.ndarray,
    window_bounds: list[tuple[str, str]] | list[tuple[int, int]],
) -> DataFile:
    """Build a DataFile; window bounds are timestamps (NAB labels) or inclusive row indices."""
    n = len(timestamps)
    windows: list[tuple[int, int]] = []
    if window_bounds and isinstance(window_bounds[0][0], str):
        ts = np.array([_parse_ts(t) for t in timestamps], dtype=np.int64)
        first: dict[int, int] = {}
        for i, t in enumerate(ts.tolist()):
            first.setdefault(t, i)
        for a, b in window_bounds:
            start, end = _parse_ts(str(a)), _parse_ts(str(b))
            lo = first.get(start)
            hi = first.get(end)
            if lo is None:  # not a row timestamp: first row at or after the start
                after = np.flatnonzero(ts >= start)
                lo = int(after[0]) if after.size else n
            if hi is None:  # not a row timestamp: last row at or before the end
                before = np.flatnonzero(ts <= end)
                hi = int(before[-1]) if before.size else -1
            if hi >= lo:
                windows.append((lo, hi))
    else:
        windows = [(int(a), int(b)) for a, b in window_bounds]
    windows.sort()
    for (_, h0), (l1, _) in zip(windows, windows[1:], strict=False):
        if l1 <= h0:
            raise ValueError(f"{relative_path}: overlapping windows")
    window_id, tp_w, fp_w = _row_weights(n, windows)
    return DataFile(
        relative_path=relative_path,
        timestamps=list(timestamps),
        values=np.asarray(values, dtype=np.float64),
        windows=windows,
        probation=probation_length(n),
        window_id=window_id,
        tp_weight=tp_w,
        fp_weight=fp_w,
    )


def _read_csv_columns(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    header = [h.strip() for h in rows[0]]
    cols: dict[str, list[str]] = {h: [] for h in header}
    for row in rows[1:]:
        if not row:
            continue
        for h, v in zip(header, row, strict=False):
            cols[h].append(v)
    return cols


def load_corpus(data_dir: str | Path) -> Corpus:
    """Load a NAB-layout directory (`data/<category>/<file>.csv`, `labels/combined_windows.json`).

    `data_dir` may be the NAB root or its `data/` folder. Only files listed in the windows
    file are loaded (as NAB does).
    """
    root = Path(data_dir)
    if (root / "data").is_dir():
        data_root, labels_path = root / "data", root / "labels" / "combined_windows.json"
    else:
        data_root, labels_path = root, root.parent / "labels" / "combined_windows.json"
    with labels_path.open() as fh:
        labels: dict[str, list[list[str]]] = json.load(fh)
    files: dict[str, DataFile] = {}
    for rel in sorted(labels):
        cols = _read_csv_columns(data_root / rel)
        values = np.array([float(v) for v in cols["value"]])
        bounds = [(str(a), str(b)) for a, b in labels[rel]]
        files[rel] = make_data_file(rel, cols["timestamp"], values, bounds)
    return Corpus(files)


def load_reference_scores(nab_dir: str | Path, detector: str) -> dict[str, np.ndarray]:
    """Per-row scores of a published detector: `reference_scores/<det>/<cat>/<det>_<file>.csv`
    (or a NAB results folder `<nab_dir>/<det>/...`), keyed by the data file's relative path."""
    root = Path(nab_dir)
    det_dir = root / "reference_scores" / detector
    if not det_dir.is_dir():
        det_dir = root / detector
    out: dict[str, np.ndarray] = {}
    prefix = detector + "_"
    for path in sorted(det_dir.glob("*/*.csv")):
        if not path.name.startswith(prefix):
            continue
        rel = f"{path.parent.name}/{path.name[len(prefix) :]}"
        cols = _read_csv_columns(path)
        out[rel] = np.array([float(v) for v in cols["anomaly_score"]])
    return out


def load_reference_thresholds(nab_dir: str | Path) -> dict[str, dict[str, float]]:
    """Published thresholds `{detector: {profile: threshold}}` (profile names as in PROFILES)."""
    with (Path(nab_dir) / "reference_thresholds.json").open() as fh:
        raw: dict[str, dict[str, dict[str, float]]] = json.load(fh)
    return {
        det: {get_profile(p).name: float(v["threshold"]) for p, v in profs.items()}
        for det, profs in raw.items()
    }


def write_results(
    out_dir: str | Path,
    detector_name: str,
    scores: Mapping[str, np.ndarray],
    corpus: Corpus,
) -> list[Path]:
    """Write NAB's results layout `<out>/<det>/<category>/<det>_<file>.csv`
    (columns timestamp,value,anomaly_score,label); returns the paths written."""
    written: list[Path] = []
    for rel, s in scores.items():
        f = corpus.files[rel]
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (f.n_rows,):
            raise ValueError(f"{rel}: expected {f.n_rows} scores, got shape {s.shape}")
        category, name = rel.split("/", 1)
        path = Path(out_dir) / detector_name / category / f"{detector_name}_{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "value", "anomaly_score", "label"])
            for t, v, a, lab in zip(f.timestamps, f.values, s, f.labels, strict=True):
                w.writerow([t, repr(float(v)), repr(float(a)), int(lab)])
        written.append(path)
    return written


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class FileScore:
    raw: float  # this file's contribution to the corpus score S
    tp: int  # NAB's row counts: detected rows inside windows
    fp: int  # detected rows outside windows
    fn: int  # undetected rows inside windows
    tn: int  # undetected rows outside windows
    windows_detected: int
    windows_missed: int
    first_detections: list[int | None]  # earliest scored detection row per window


@dataclass(frozen=True)
class ScoreReport:
    profile: str
    threshold: float
    score: float  # normalised: 0 = null detector, 100 = perfect
    raw: float  # S, summed over files
    null: float
    perfect: float
    files: dict[str, FileScore]

    @property
    def tp(self) -> int:
        return sum(f.tp for f in self.files.values())

    @property
    def fp(self) -> int:
        return sum(f.fp for f in self.files.values())

    @property
    def fn(self) -> int:
        return sum(f.fn for f in self.files.values())

    @property
    def tn(self) -> int:
        return sum(f.tn for f in self.files.values())

    @property
    def windows_detected(self) -> int:
        return sum(f.windows_detected for f in self.files.values())

    @property
    def windows_missed(self) -> int:
        return sum(f.windows_missed for f in self.files.values())


def _checked(f: DataFile, s: np.ndarray) -> np.ndarray:
    s = np.asarray(s, dtype=np.float64)
    if s.shape != (f.n_rows,):
        raise ValueError(f"{f.relative_path}: expected {f.n_rows} scores, got shape {s.shape}")
    return s


def score_file(f: DataFile, scores: np.ndarray, threshold: float, profile: Profile) -> FileScore:
    """NAB score of one file at one threshold (rows with score >= threshold detect)."""
    s = _checked(f, scores)
    scored = np.arange(f.n_rows) >= f.probation
    with np.errstate(invalid="ignore"):
        det = scored & (s >= threshold)
    inside = f.window_id >= 0
    raw = profile.fp * float(f.fp_weight[det & ~inside].sum())
    firsts: list[int | None] = []
    n_hit = n_miss = 0
    for lo, hi in f.windows:
        rows = np.arange(max(lo, f.probation), hi + 1)
        if rows.size == 0:  # window entirely in the probationary period: not scored
            firsts.append(None)
            continue
        hits = rows[det[rows]]
        if hits.size:
            first = int(hits[0])
            firsts.append(first)
            raw += profile.tp * float(f.tp_weight[first])
            n_hit += 1
        else:
            firsts.append(None)
            raw -= profile.fn
            n_miss += 1
    return FileScore(
        raw=raw,
        tp=int((det & inside).sum()),
        fp=int((det & ~inside).sum()),
        fn=int((scored & inside & ~det).sum()),
        tn=int((scored & ~inside & ~det).sum()),
        windows_detected=n_hit,
        windows_missed=n_miss,
        first_detections=firsts,
    )


def _scored_windows(corpus: Corpus) -> int:
    return sum(1 for f in corpus.files.values() for _, hi in f.windows if hi >= f.probation)


def _check_keys(corpus: Corpus, scores: Mapping[str, np.ndarray]) -> None:
    missing = sorted(set(corpus.files) - set(scores))
    if missing:
        raise ValueError(f"no scores for {len(missing)} corpus files, e.g. {missing[0]}")


def score_detector(
    corpus: Corpus,
    scores: Mapping[str, np.ndarray],
    threshold: float,
    profile: str | Profile = "standard",
) -> ScoreReport:
    """Score per-row anomaly scores of every corpus file at one threshold."""
    prof = get_profile(profile)
    _check_keys(corpus, scores)
    files = {rel: score_file(f, scores[rel], threshold, prof) for rel, f in corpus.files.items()}
    raw = sum(fs.raw for fs in files.values())
    perfect = prof.tp * corpus.n_windows
    null = -prof.fn * _scored_windows(corpus)
    return ScoreReport(
        profile=prof.name,
        threshold=float(threshold),
        score=100.0 * (raw - null) / (perfect - null),
        raw=raw,
        null=null,
        perfect=perfect,
        files=files,
    )


def threshold_sweep(
    corpus: Corpus, scores: Mapping[str, np.ndarray], profile: str | Profile = "standard"
) -> tuple[np.ndarray, np.ndarray]:
    """Corpus score S at every candidate threshold (NAB's sweeper, vectorised).

    Returns (thresholds, raw scores), thresholds descending; the first candidate lies above
    every score (no detections: S = S_null). Detections at threshold t are rows >= t.
    """
    prof = get_profile(profile)
    _check_keys(corpus, scores)
    vals: list[np.ndarray] = []
    deltas: list[np.ndarray] = []
    for rel, f in corpus.files.items():
        s = _checked(f, scores[rel])
        scored = (np.arange(f.n_rows) >= f.probation) & ~np.isnan(s)
        outside = scored & (f.window_id < 0)
        vals.append(s[outside])
        deltas.append(prof.fp * f.fp_weight[outside])
        for lo, hi in f.windows:
            rows = np.arange(max(lo, f.probation), hi + 1)
            rows = rows[scored[rows]]
            if rows.size == 0:
                continue
            order = np.argsort(-s[rows], kind="stable")
            credit = prof.tp * f.tp_weight[rows[order]]
            best = np.maximum.accumulate(credit)
            prev = np.concatenate(([-prof.fn], best[:-1]))
            vals.append(s[rows[order]])
            deltas.append(best - prev)
    v = np.concatenate(vals) if vals else np.empty(0)
    d = np.concatenate(deltas) if deltas else np.empty(0)
    null = -prof.fn * _scored_windows(corpus)
    uniq, inverse = np.unique(-v, return_inverse=True)  # ascending -v = descending v
    grouped = np.bincount(inverse, weights=d, minlength=uniq.size)
    top = float(-uniq[0]) if uniq.size else 0.0
    thresholds = np.concatenate(([max(1.1, top + 1.0)], -uniq))
    raw = null + np.concatenate(([0.0], np.cumsum(grouped)))
    return thresholds, raw


def optimize_threshold(
    corpus: Corpus, scores: Mapping[str, np.ndarray], profile: str | Profile = "standard"
) -> tuple[float, ScoreReport]:
    """NAB's threshold optimisation: the threshold maximising the corpus score
    (ties: the highest such threshold), with the full report at that threshold."""
    thresholds, raw = threshold_sweep(corpus, scores, profile)
    best = int(np.argmax(raw))
    thr = float(thresholds[best])
    return thr, score_detector(corpus, scores, thr, profile)


# --------------------------------------------------------------------------- running


def run_stream(detector_factory: Callable[[], Any], values: np.ndarray) -> np.ndarray:
    """Feed `values` one at a time to a fresh detector; per-row scores, prequential order.

    Uses `update(x)` when the detector has it, else `score_one(x)` then `learn_one(x)`.
    """
    det = detector_factory()
    xs = np.asarray(values, dtype=np.float64)
    out = np.empty(xs.size)
    if hasattr(det, "update"):
        upd = det.update
        for i, x in enumerate(xs.tolist()):
            out[i] = upd(x)
    else:
        for i, x in enumerate(xs.tolist()):
            out[i] = det.score_one(x)
            det.learn_one(x)
    return out


def run_corpus(corpus: Corpus, detector_factory: Callable[[], Any]) -> dict[str, np.ndarray]:
    """Per-row scores of a fresh detector on every corpus file."""
    return {rel: run_stream(detector_factory, f.values) for rel, f in corpus.files.items()}


def evaluate_detector(
    nab_dir: str | Path,
    factory: Callable[[], Any],
    profile: str | Profile = "standard",
    *,
    corpus: Corpus | None = None,
) -> dict[str, Any]:
    """Run a detector over a NAB corpus and score it the NAB way (threshold optimised per
    profile). Keys: standard, reward_low_FP, reward_low_FN (normalised scores),
    thresholds, seconds (detector run time), profile and files (per-file detail for
    `profile`), reports (ScoreReport per profile), scores (per-row scores)."""
    corpus = corpus if corpus is not None else load_corpus(nab_dir)
    t0 = time.perf_counter()
    scores = run_corpus(corpus, factory)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"thresholds": {}, "reports": {}, "seconds": seconds}
    for name in PROFILES:
        thr, rep = optimize_threshold(corpus, scores, name)
        out[name] = rep.score
        out["thresholds"][name] = thr
        out["reports"][name] = rep
    chosen = get_profile(profile).name
    rep = out["reports"][chosen]
    out["profile"] = chosen
    out["files"] = {
        rel: {
            "raw": fs.raw,
            "windows_detected": fs.windows_detected,
            "windows_missed": fs.windows_missed,
            "fp": fs.fp,
            "first_detections": fs.first_detections,
        }
        for rel, fs in rep.files.items()
    }
    out["scores"] = scores
    return out
