"""Run Vigil's telemetry detector on the NAB development subset (../shared/data/nab).

    python bench/nab_tune.py                      # default configuration, one line
    python bench/nab_tune.py '{"embed": 12}'      # a variant (TelemetryDetector kwargs)
    python bench/nab_tune.py --detail             # per-file windows and false positives
    python bench/nab_tune.py --report             # the tables of reports/nab.md
    python bench/nab_tune.py --ablations          # the ablation table of reports/nab.md

Scores are NAB's normalised scores with the threshold optimised per profile on this subset
(as NAB does per corpus); "fixed" is the score at the detector's own alert level instead.
Only for development: every number here comes from the labelled subset, so choosing a
configuration by these numbers fits it to the subset (the other NAB categories are held out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detector.telemetry import TelemetryDetector  # noqa: E402
from models.evaluation.nab import (  # noqa: E402
    PROFILES,
    Corpus,
    ScoreReport,
    load_corpus,
    load_reference_scores,
    load_reference_thresholds,
    optimize_threshold,
    run_stream,
    score_detector,
)

NAB = ROOT.parent / "shared" / "data" / "nab"
REFERENCES = {"ARTime": "ARTime", "numenta": "Numenta HTM", "randomCutForest": "Random Cut Forest"}
ABLATIONS: list[tuple[str, dict[str, Any]]] = [
    ("final configuration", {}),
    ("no spike signal", {"local_length": 0}),
    ("no level checks", {"level_windows": ()}),
    ("level check on raw values only (no 16-row mean)", {"level_windows": (1,)}),
    ("no shape signals", {"shape_scales": ()}),
    ("shape scale 2 only", {"shape_scales": (2,)}),
    ("no refractory period", {"refractory": 0}),
    ("refractory 40 rows", {"refractory": 40}),
    ("horizon 500", {"horizon": 500}),
    ("horizon 2000", {"horizon": 2000}),
    ("embed 6 blocks", {"embed": 6}),
    ("embed 12 blocks", {"embed": 12}),
    ("shape scales 3, 12, 48", {"shape_scales": (3, 12, 48)}),
    ("shape scales 1, 4, 16", {"shape_scales": (1, 4, 16)}),
    ("level tolerance 0.01", {"level_tol": 0.01}),
    ("level tolerance 0.04", {"level_tol": 0.04}),
    ("spike baseline 50 rows", {"local_length": 50}),
    ("spike baseline 200 rows", {"local_length": 200}),
    ("history capacity 1000", {"capacity": 1000}),
    ("history capacity 4000", {"capacity": 4000}),
]


def _run(args: tuple[dict[str, Any], np.ndarray]) -> tuple[np.ndarray, float]:
    params, values = args
    t0 = time.perf_counter()
    s = run_stream(lambda: TelemetryDetector(**params), values)
    return s, time.perf_counter() - t0


def run_all(
    corpus: Corpus, params: dict[str, Any], jobs: int
) -> tuple[dict[str, np.ndarray], float]:
    """Per-row scores for every file, and the summed single-process detector time."""
    rels = sorted(corpus.files, key=lambda r: -corpus.files[r].n_rows)
    work = [(params, corpus.files[r].values) for r in rels]
    if jobs > 1:
        with Pool(jobs) as pool:
            outs = pool.map(_run, work)
    else:
        outs = [_run(w) for w in work]
    return {r: o[0] for r, o in zip(rels, outs, strict=True)}, sum(o[1] for o in outs)


def optimised(corpus: Corpus, scores: dict[str, np.ndarray]) -> dict[str, ScoreReport]:
    return {p: optimize_threshold(corpus, scores, p)[1] for p in PROFILES}


def _line(reports: dict[str, ScoreReport]) -> str:
    return " ".join(f"{p}={r.score:.2f}@{r.threshold:.4g}" for p, r in reports.items())


def _row(name: str, reports: dict[str, ScoreReport], note: str = "") -> str:
    std = reports["standard"]
    cells = " | ".join(f"{reports[p].score:.2f}" for p in PROFILES)
    win = f"{std.windows_detected}/{std.windows_detected + std.windows_missed}"
    return f"| {name} | {cells} | {win} | {std.fp} | {note} |"


def report(corpus: Corpus, jobs: int) -> None:
    t0 = time.perf_counter()
    ours, cpu = run_all(corpus, {}, jobs)
    wall = time.perf_counter() - t0
    alarm = TelemetryDetector().alarm
    published = load_reference_thresholds(NAB)
    head = "| detector | standard | reward_low_FP | reward_low_FN | windows (std) | FP rows (std) |"
    print(head + " threshold |")
    print("|---|---:|---:|---:|---:|---:|---|")
    vigil = optimised(corpus, ours)
    fixed = {p: score_detector(corpus, ours, alarm, p) for p in PROFILES}
    print(_row("**Vigil TelemetryDetector**", vigil, "optimised on this subset (NAB's rule)"))
    print(_row("Vigil TelemetryDetector", fixed, f"fixed a priori: alert level {alarm}"))
    refs = {}
    for det, label in REFERENCES.items():
        scores = load_reference_scores(NAB, det)
        refs[det] = scores
        pub = {p: score_detector(corpus, scores, published[det][p], p) for p in PROFILES}
        print(_row(label, pub, "published (whole-corpus) thresholds"))
    for det, label in REFERENCES.items():
        print(_row(label, optimised(corpus, refs[det]), "re-optimised on this subset"))
    print(
        f"\nruntime: {cpu:.1f} s detector time for {sum(f.n_rows for f in corpus.files.values())}"
        f" rows ({1e6 * cpu / sum(f.n_rows for f in corpus.files.values()):.0f} us/row), "
        f"wall {wall:.1f} s with {jobs} processes"
    )
    # per category, standard profile, each at its own standard threshold
    per = {"Vigil": vigil["standard"]}
    for det in REFERENCES:
        per[det] = score_detector(corpus, refs[det], published[det]["standard"], "standard")
    cats = sorted({rel.split("/")[0] for rel in corpus.files})
    print("\n| category | windows | " + " | ".join(per) + " |")
    print("|---|---:|" + "---:|" * len(per))
    for cat in cats:
        rels = [r for r in corpus.files if r.startswith(cat + "/")]
        n_win = sum(len(corpus.files[r].windows) for r in rels)
        cells = []
        for rep in per.values():
            raw = sum(rep.files[r].raw for r in rels)
            hit = sum(rep.files[r].windows_detected for r in rels)
            fp = sum(rep.files[r].fp for r in rels)
            cells.append(f"{raw:+.2f} ({hit} hit, {fp} FP)")
        print(f"| {cat} | {n_win} | " + " | ".join(cells) + " |")


def ablations(corpus: Corpus, jobs: int) -> None:
    print("| variant | standard | reward_low_FP | reward_low_FN | windows | FP rows | |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, params in ABLATIONS:
        scores, _ = run_all(corpus, params, jobs)
        print(_row(name, optimised(corpus, scores), json.dumps(params) if params else ""))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("params", nargs="?", default="{}", help="TelemetryDetector kwargs, JSON")
    ap.add_argument("--detail", action="store_true")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--ablations", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    corpus = load_corpus(NAB)
    if a.report:
        report(corpus, a.jobs)
        return
    if a.ablations:
        ablations(corpus, a.jobs)
        return
    params = json.loads(a.params)
    for k, v in params.items():
        if isinstance(v, list):
            params[k] = tuple(v)
    t0 = time.perf_counter()
    scores, cpu = run_all(corpus, params, a.jobs)
    wall = time.perf_counter() - t0
    reps = optimised(corpus, scores)
    alarm = params.get("alarm", TelemetryDetector().alarm)
    fixed = score_detector(corpus, scores, alarm, "standard")
    std = reps["standard"]
    print(
        _line(reps),
        f"| fixed@{alarm}={fixed.score:.2f}",
        f"| windows {std.windows_detected}/{std.windows_detected + std.windows_missed}",
        f"fp={std.fp} | cpu {cpu:.1f}s wall {wall:.1f}s",
    )
    if a.detail:
        for rel, f in corpus.files.items():
            fs = std.files[rel]
            pos = [
                None if d is None else round((d - lo) / (hi - lo + 1), 2)
                for d, (lo, hi) in zip(fs.first_detections, f.windows, strict=True)
            ]
            print(f"  {rel[:55]:55s} raw={fs.raw:6.2f} fp={fs.fp:3d} first hit at {pos}")


if __name__ == "__main__":
    main()
