"""`vigil eval ...`: measure detectors on public labelled data and print the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Evaluate detectors on labelled data (NAB, ADBench, scenarios).",
)
out = Console()
err = Console(stderr=True)

#: Published standard scores on the NAB development subset (../shared/data/README.md).
NAB_REFERENCE = {"ARTime": 73.55, "Numenta HTM": 69.52, "Random Cut Forest": 50.64}


def _default_data(*parts: str) -> Path:
    """`../shared/data/...` beside the repository (where CI lays it)."""
    return Path(__file__).resolve().parents[2].joinpath("shared", "data", *parts)


def _need(path: Path, what: str) -> None:
    if not path.exists():
        err.print(f"[red]{what} not found at {path}[/]; pass its location with --data")
        raise typer.Exit(2)


def _register_models() -> None:
    """`vigil eval sequence` lives with the models it evaluates."""
    from models.cli import eval_sequence

    app.command("sequence", help="Sequence models vs isolation forest on held-out seeds.")(
        eval_sequence
    )


_register_models()


@app.command("nab")
def nab(
    data: Annotated[Path | None, typer.Option(help="NAB-layout dir (data/, labels/).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    scores_out: Annotated[
        Path | None, typer.Option(help="Write per-row scores in NAB's results layout here.")
    ] = None,
) -> None:
    """Streaming telemetry detector on NAB, scored by Vigil's NAB scorer."""
    from detector.telemetry import TelemetryDetector
    from models.evaluation.nab import evaluate_detector, load_corpus, write_results

    nab_dir = data or _default_data("nab")
    _need(nab_dir / "labels" / "combined_windows.json", "NAB labels")
    corpus = load_corpus(nab_dir)
    with err.status(f"running the detector over {len(corpus.files)} series"):
        res = evaluate_detector(nab_dir, TelemetryDetector, corpus=corpus)
    if scores_out is not None:
        write_results(scores_out, "vigil", res["scores"], corpus)
    summary: dict[str, Any] = {
        "standard": res["standard"],
        "reward_low_FP": res["reward_low_FP"],
        "reward_low_FN": res["reward_low_FN"],
        "thresholds": res["thresholds"],
        "seconds": res["seconds"],
        "files": res["files"],
    }
    if as_json:
        out.print_json(json.dumps(summary, default=float))
        return
    t = Table(title="NAB (development subset), normalised scores")
    for col in ("detector", "standard", "reward_low_FP", "reward_low_FN"):
        t.add_column(col)
    t.add_row(
        "Vigil TelemetryDetector",
        *(f"{res[k]:.2f}" for k in ("standard", "reward_low_FP", "reward_low_FN")),
    )
    for name, score in NAB_REFERENCE.items():
        t.add_row(f"{name} (published)", f"{score:.2f}", "", "")
    out.print(t)
    out.print(
        f"{len(corpus.files)} series in {res['seconds']:.1f} s; gap to ARTime "
        f"{res['standard'] - NAB_REFERENCE['ARTime']:+.2f}, to HTM "
        f"{res['standard'] - NAB_REFERENCE['Numenta HTM']:+.2f}"
    )


@app.command("tabular")
def tabular(
    data: Annotated[Path | None, typer.Option(help="Dir with ADBench .npz files.")] = None,
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Isolation forest on ADBench http/smtp/shuttle: ROC-AUC and average precision."""
    from dataclasses import asdict

    from models.evaluation.tabular import PUBLISHED_ROC_AUC, evaluate_adbench

    d = data or _default_data("adbench")
    _need(d, "ADBench data")
    with err.status("fitting and scoring isolation forests"):
        results = evaluate_adbench(d, seed=seed)
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in results]))
        return
    t = Table(title="Isolation forest on ADBench (unsupervised, 100 trees, 256 samples)")
    for col in ("set", "rows", "anomalies", "ROC-AUC", "published", "AP", "score rows/s"):
        t.add_column(col)
    for r in results:
        pub = PUBLISHED_ROC_AUC.get(r.name)
        t.add_row(
            r.name,
            str(r.n),
            str(r.anomalies),
            f"{r.roc_auc:.4f}",
            f"{pub:.4f}" if pub else "",
            f"{r.average_precision:.3f}",
            f"{r.score_rows_per_s:,.0f}",
        )
    out.print(t)


def _parse_seeds(text: str) -> tuple[int, ...]:
    """`101-103` or `101,102,103` (or a mix) -> seeds."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            seeds += range(lo, hi + 1)
        else:
            seeds.append(int(part))
    if not seeds:
        raise typer.BadParameter("no seeds given")
    return tuple(seeds)


@app.command("scenario")
def scenario(
    seeds: Annotated[
        str,
        typer.Option(help="Held-out simulator seeds, e.g. 101-103 (no test or tuning uses them)."),
    ] = "101-103",
    duration: Annotated[float, typer.Option(help="Simulated seconds of traffic per seed.")] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Where scenario.md and the PNG plots go.")
    ] = Path("reports"),
    nab_data: Annotated[
        Path | None, typer.Option("--nab-data", help="NAB dir for the score timeline plot.")
    ] = None,
    sequence_artifacts: Annotated[
        Path | None,
        typer.Option(
            "--sequence-artifacts",
            help="Artifact root with a tx_sequence model (vigil train tx --out DIR): compare "
            "it with the forest on the same entities (skipped, with a note, when absent).",
        ),
    ] = None,
    dev_seeds: Annotated[
        str, typer.Option(help="Seeds fixing the forest/sequence thresholds (1 % FPR).")
    ] = "1-10",
) -> None:
    """Simulator scenarios replayed offline: per bot family and node fault figures + plots."""
    from pipelines.scenario_eval import run_scenarios, write_report

    seed_list = _parse_seeds(seeds)
    with err.status("replaying scenarios") as status:
        res = run_scenarios(
            seed_list,
            duration,
            progress=lambda m: status.update(m),
            sequence_artifacts=sequence_artifacts,
            dev_seeds=_parse_seeds(dev_seeds),
        )
        status.update("writing the report and plots")
        written = write_report(res, out_dir, nab_data or _default_data("nab"))
    if as_json:
        out.print_json(json.dumps(res.to_dict(), default=float))
        return

    def f(x: float | None, fmt: str = "{:.2f}") -> str:
        return "n/a" if x is None else fmt.format(x)

    t = Table(title=f"Bot families vs normal users (seeds {seeds}, {duration:.0f} s each)")
    for col in ("family", "entities", "P", "R", "F1", "ROC-AUC", "TTD med s", "throttles"):
        t.add_column(col)
    for r in res.tx_families:
        t.add_row(
            r.family,
            str(r.entities),
            f(r.precision),
            f(r.recall),
            f(r.f1),
            f(r.roc_auc, "{:.3f}"),
            f(r.ttd_median_s, "{:.0f}"),
            str(r.actions),
        )
    out.print(t)
    n = Table(title="Node faults vs honest nodes")
    for col in ("fault", "nodes", "P", "R", "F1", "TTD med s", "slash proposals"):
        n.add_column(col)
    for r in res.node_faults:
        n.add_row(
            r.family,
            str(r.entities),
            f(r.precision),
            f(r.recall),
            f(r.f1),
            f(r.ttd_median_s, "{:.0f}"),
            str(r.actions),
        )
    out.print(n)
    colour = "green" if res.false_throttles == 0 and res.honest_slash_proposals == 0 else "red"
    out.print(
        f"[{colour}]false throttles {res.false_throttles} ({res.normal_alerted}/"
        f"{res.normal_entities} normal users alerted); slash proposals against honest nodes "
        f"{res.honest_slash_proposals} ({res.honest_alerted}/{res.honest_nodes} alerted)[/]"
    )
    if res.sequence is not None:
        c = res.sequence
        st = Table(title=f"Forest vs tx sequence model {c.artifact} (same entities)")
        for col in ("family", "entities", "AUC forest", "AUC seq", "AUC seq hist", "R forest"):
            st.add_column(col)
        st.add_column("R seq")
        for sr in c.rows:
            st.add_row(
                sr.family,
                str(sr.entities),
                *(f(sr.roc_auc[k], "{:.3f}") for k in ("forest", "sequence", "sequence_history")),
                f(sr.recall["forest"]),
                f(sr.recall["sequence"]),
            )
        out.print(st)
        out.print(
            f"with sequence evidence: {c.normal_alerted_with_sequence}/{c.normal_entities} "
            f"normal users alerted, false throttles {c.false_throttles_with_sequence}"
        )
    elif sequence_artifacts is None:
        out.print("forest vs sequence model: skipped (pass --sequence-artifacts DIR)")
    out.print("wrote " + ", ".join(str(p) for p in written.values()))
