"""``harness leaderboard``, ``harness compare`` and ``harness report``: argument parsers and commands."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness.errors import HarnessError

EXIT_REGRESSION = 3  # harness compare --fail-on-regression: a significant regression (2: bad input)

EPILOG_LEADERBOARD = """examples:
  harness leaderboard runs/demo                       leaderboards/demo.{csv,md,html}
  harness leaderboard 'runs/*' published --name all   every run, and the paper's Table 2 beside them
  harness leaderboard runs/demo --alpaca-eval         also AlpacaEval leaderboard CSVs, one per language
  harness leaderboard --history demo/pi_2             a model's numbers over past builds
"""
EPILOG_COMPARE = """examples:
  harness compare runs/demo                           each consecutive pair: pi_ref->pi_0->pi_1->pi_2
  harness compare runs/demo:pi_0 runs/demo:pi_2       two models (RUN:MODEL, or a harness eval folder)
  harness compare runs/demo --fail-on-regression      exit 3 if any language regressed significantly (CI gate)
"""


def add_parsers(sub) -> None:
    lb = sub.add_parser("leaderboard", help="X-AlpacaEval leaderboard (csv, md, html) from run folders",
                        epilog=EPILOG_LEADERBOARD, formatter_class=argparse.RawDescriptionHelpFormatter)
    lb.add_argument("sources", nargs="*", metavar="RUN_OR_GLOB",
                    help="run folders, harness eval folders, globs of them, or 'published' (the paper's Table 2)")
    lb.add_argument("--name", help="file name under --out (default: the run's name, or 'leaderboard')")
    lb.add_argument("--out", default="leaderboards", help="output folder (default: ./leaderboards)")
    lb.add_argument("--alpaca-eval", action="store_true", help="also write AlpacaEval leaderboard CSVs per language")
    lb.add_argument("--history", metavar="MODEL", help="list MODEL's numbers from <out>/history.jsonl and stop")
    lb.add_argument("--plot", metavar="PNG", help="with --history: also plot them over time into PNG")
    lb.add_argument("--debug", action="store_true")
    lb.set_defaults(fn=cmd_leaderboard)
    c = sub.add_parser("compare", help="paired bootstrap of the WR / LC change per language between two models",
                       epilog=EPILOG_COMPARE, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("a", metavar="A", help="RUN (its consecutive models), RUN:MODEL or a harness eval folder")
    c.add_argument("b", metavar="B", nargs="?", help="the model to compare A with")
    c.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--alpha", type=float, default=0.05, help="significance level after Benjamini-Hochberg")
    c.add_argument("--fail-on-regression", action="store_true",
                   help=f"exit {EXIT_REGRESSION} when any language regressed significantly")
    c.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    c.add_argument("--debug", action="store_true")
    c.set_defaults(fn=cmd_compare)
    r = sub.add_parser("report", help="plots and an HTML report of one run (RUN/report/index.html)")
    r.add_argument("run", help="run folder")
    r.add_argument("--out", help="output folder (default: RUN/report)")
    r.add_argument("--debug", action="store_true")
    r.set_defaults(fn=cmd_report)


def _default_name(sources: list[str]) -> str:
    import re

    real = [s for s in sources if s != "published"]
    name = Path(real[0]).name if len(real) == 1 and not any(c in real[0] for c in "*?[") else "leaderboard"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "leaderboard"


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from rich.table import Table

    from harness.leaderboard.table import build, fmt, read_history
    from harness.ui import console

    if args.history:
        rows = read_history(Path(args.out) / "history.jsonl", args.history)
        if not rows:
            raise HarnessError(f"no model matching '{args.history}' in the history", Path(args.out) / "history.jsonl")
        table = Table(title=f"history of {args.history}")
        for col in ("time", "model", "lang", "WR ± se", "LC ± se", "n", "key"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["time"], r["model"], r["lang"], fmt(r["win_rate"], r["standard_error"]),
                          fmt(r["length_controlled_winrate"], r["lc_standard_error"]), str(r["n_total"]), r["key"])
        console.print(table)
        if args.plot:
            console.print(f"wrote: {plot_history(rows, Path(args.plot))}")
        return 0
    if args.plot:
        raise HarnessError("--plot draws a model's history: use it with --history MODEL")
    if not args.sources:
        raise HarnessError("give at least one run folder (or 'published'); see: harness leaderboard --help")
    name = args.name or _default_name(args.sources)
    if "/" in name or name in (".", ".."):
        raise HarnessError(f"--name must be a plain file name, not '{name}'")
    built = build(args.sources, args.out, name, alpaca_eval=args.alpaca_eval)
    md = built.files[1].read_text(encoding="utf-8")
    n_models = sum(len(s.models) for s in built.sections)
    console.print(md if n_models <= 12 else f"{n_models} models in {len(built.sections)} section(s)")
    console.print(f"wrote: {', '.join(str(f) for f in built.files)}")
    return 0


def plot_history(rows: list[dict], path: Path) -> Path:
    """WR and LC of the history rows over build time, one line per (model, language)."""
    import datetime as dt

    from harness.leaderboard.report import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        series.setdefault((r["model"], r["lang"]), []).append(r)
    for (model, lang), rs in series.items():
        t = [dt.datetime.fromisoformat(r["time"]) for r in rs]
        for ax, metric in zip(axes, ("length_controlled_winrate", "win_rate")):
            ax.plot(t, [r[metric] for r in rs], marker="o", label=f"{model} {lang}")
    for ax, title in zip(axes, ("LC (%)", "WR (%)")):
        ax.set_title(f"{title} per leaderboard build")
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelrotation=30)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def print_changes(title: str, changes) -> None:
    from rich.table import Table

    from harness.ui import console

    def num(v, sign=False):
        return "n/a" if v is None else (f"{v:+.2f}" if sign else f"{v:.2f}")

    table = Table(title=title)
    for col in ("lang", "metric", "A", "B", "change", "95% CI", "p (BH)", "n", "verdict"):
        table.add_column(col)
    color = {"improved": "green", "regressed": "red"}
    for c in changes:
        ci = "n/a" if c.low is None else f"[{c.low:+.2f}, {c.high:+.2f}]"
        p = "n/a" if c.p is None else f"{c.p:.3f}" + ("" if c.p_adjusted is None else f" ({c.p_adjusted:.3f})")
        v = f"[{color[c.verdict]}]{c.verdict}[/]" if c.verdict in color else c.verdict
        table.add_row(c.lang, c.metric, num(c.a), num(c.b), num(c.delta, True), ci, p, str(c.n), v)
    console.print(table)


def cmd_compare(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from harness.io import atomic_write_json
    from harness.leaderboard.compare import LC_METHOD, compare, consecutive, regressions, resolve
    from harness.ui import console

    if not 0 < args.alpha < 1:
        raise HarnessError(f"--alpha must be in (0, 1), got {args.alpha}")
    pairs = [(resolve(args.a), resolve(args.b))] if args.b else consecutive(args.a)
    t0 = time.time()
    results, bad = [], []
    for a, b in pairs:
        changes = compare(a, b, n_boot=args.n_boot, seed=args.seed, alpha=args.alpha)
        print_changes(f"{a.name} -> {b.name}", changes)
        results.append({"a": a.name, "b": b.name, "changes": [asdict(c) for c in changes]})
        bad += [(a, b, c) for c in regressions(changes)]
    console.print(f"WR: paired bootstrap over shared instruction ids ({args.n_boot} resamples, seed {args.seed}); "
                  f"LC: {LC_METHOD}; Benjamini-Hochberg across languages at alpha {args.alpha}; "
                  f"{time.time() - t0:.1f} s")
    if args.json:
        path = atomic_write_json(args.json, {"n_boot": args.n_boot, "seed": args.seed, "alpha": args.alpha,
                                             "lc_method": LC_METHOD, "comparisons": results})
        console.print(f"wrote: {path}")
    for a, b, c in bad:
        console.print(f"[red]regression[/red]: {c.lang} {c.metric} {a.name} -> {b.name}: {c.delta:+.2f} "
                      f"[{c.low:+.2f}, {c.high:+.2f}], p (BH) {c.p_adjusted:.3f}")
    if bad and args.fail_on_regression:
        first = bad[0]
        print(f"harness: regression: {first[2].lang} {first[2].metric} {first[0].name} -> {first[1].name} "
              f"({len(bad)} significant regression(s))", file=sys.stderr)
        return EXIT_REGRESSION
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from harness.leaderboard.report import write_report
    from harness.ui import console

    written = write_report(args.run, args.out)
    console.print(f"wrote: {written['index']} ({len(written['plots'])} plots, {written['pages']} output pages)")
    return 0


def after_run(run: Path) -> None:
    """The end of ``harness run`` / ``demo`` with evaluation: the run's leaderboard and report, and every
    iteration-to-iteration regression (the comparison of consecutive models, as ``harness compare RUN``)."""
    from harness.leaderboard.compare import MIN_N, compare, consecutive, regressions
    from harness.leaderboard.report import write_report
    from harness.leaderboard.table import build
    from harness.ui import console

    built = build([str(run)], run, "leaderboard", history=False, title=f"run {run.name}")
    console.print(built.files[1].read_text(encoding="utf-8"))
    report = write_report(run)
    found = []
    pairs = consecutive(str(run)) if sum(len(s.models) for s in built.sections) > 1 else []
    for a, b in pairs:
        found += [(a, b, c) for c in regressions(compare(a, b))]
    for a, b, c in found:
        console.print(f"[red]regression[/red]: {c.lang} {c.metric} {a.label} -> {b.label}: {c.delta:+.2f} "
                      f"[{c.low:+.2f}, {c.high:+.2f}], p (BH) {c.p_adjusted:.3f}")
    if pairs and not found:
        console.print(f"no significant regression between consecutive models ({len(pairs)} comparisons; "
                      f"harness compare {run} for the table; no verdict below {MIN_N} instructions)")
    console.print(f"wrote: {', '.join(str(f) for f in built.files)}; report: {report['index']}")
