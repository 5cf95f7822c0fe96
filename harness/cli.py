"""Command line: ``harness run | demo | eval | ls | bench | score-annotations | leaderboard | compare | report``.

Commands import their heavy modules only when they run, so ``harness --help``, ``harness ls`` and config errors
never load torch, transformers, vllm or trl. Exit codes: 0 ok, 2 bad input or configuration (one line on stderr,
traceback only with --debug), 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from harness.errors import EXIT_BAD_INPUT, HarnessError

EPILOG_RUN = """examples:
  harness run demo                                  the packaged demo (same as: harness demo)
  harness run my.yaml train.beta=0.2 languages=[en,de,fr]
  harness run paper --dry-run                       the paper's GPU setting: plan and counts, no model loaded
  harness run my.yaml --force reward                redo the reward stage (every iteration) and what follows
  harness run my.yaml --until 1:pairs               stop after iteration 1's pairs (to read them before training)
"""


def _quiet_third_party() -> None:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # third-party tqdm bars; harness draws its own rich bars
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _setup_logging(debug: bool, logfile: Path | None = None) -> None:
    from rich.logging import RichHandler

    from harness.ui import console

    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO)
    h = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    h.setLevel(logging.DEBUG if debug else logging.INFO)
    h.addFilter(lambda r: r.name.startswith("harness") or r.levelno >= logging.WARNING)
    root.addHandler(h)
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(logfile, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
    for name in ("transformers", "datasets", "vllm", "torch", "accelerate", "httpx", "urllib3", "filelock"):
        logging.getLogger(name).setLevel(logging.WARNING)


# -- run / demo ----------------------------------------------------------------------------------------------------
def _resolve_config(name_or_path: str) -> Path:
    from harness.config import list_presets, preset_path

    p = Path(name_or_path)
    if p.exists() or p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.exists():
            raise HarnessError("config file does not exist", p)
        return p
    preset = preset_path(name_or_path)
    if preset is None:
        import difflib

        close = difflib.get_close_matches(name_or_path, list_presets(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise HarnessError(f"'{name_or_path}' is neither a config file nor a preset{hint} "
                           f"presets: {', '.join(list_presets())}")
    return preset


def cmd_run(args: argparse.Namespace) -> int:
    from harness.config import load_config
    from harness.paths import runs_root

    overrides = list(args.overrides)
    if args.run_name is not None:  # quoted: a flag's value is a literal string, never YAML (`--run-name on`)
        overrides.append(f"run_name={json.dumps(args.run_name)}")
    if args.data_dir is not None:
        overrides.append(f"data_dir={json.dumps(args.data_dir)}")
    cfg_path = _resolve_config(args.config)
    cfg, _ = load_config(cfg_path, overrides)
    if cfg.strategies:
        return _run_comparison(cfg, args)
    return _run_one(cfg, args, runs_root(args.runs_dir))


def _run_comparison(cfg, args: argparse.Namespace) -> int:
    """``strategies: [...]``: one run per strategy under runs/<run_name>/, in order; stages whose hash a finished
    sibling already has are shared (hard-linked), not redone; a strategy that fails does not stop the others (their
    finished stages stay, a rerun resumes only what is missing); one leaderboard of every model at the end."""
    import dataclasses

    from harness.paths import runs_root
    from harness.pipeline import Pipeline
    from harness.ui import console

    root = runs_root(args.runs_dir) / cfg.run_name
    if len(set(cfg.strategies)) != len(cfg.strategies):
        raise HarnessError(f"strategies lists a strategy twice: {cfg.strategies}", key="strategies")
    subs = [dataclasses.replace(cfg, strategy=s, strategies=[], run_name=s,
                                strategy_options=_options_of(cfg, s)) for s in cfg.strategies]
    for sub in subs:  # every strategy's config problems before the first stage runs (Pipeline checks the strategy)
        sub.validate()
        Pipeline(sub, root, offline_plan=args.dry_run, share=True)
    failed = []
    for sub in subs:
        console.print(f"[bold]strategy {sub.strategy}[/bold] -> {root / sub.strategy}")
        try:
            _run_one(sub, args, root, share=True, after=False)
        except HarnessError as e:
            if args.debug:
                raise
            failed.append((sub.strategy, e.render()))
            console.print(f"[red]strategy {sub.strategy} failed[/red]: {e.render()}")
    if args.dry_run:
        return 0
    finished = [str(root / s.strategy) for s in subs if any((root / s.strategy).glob("iter_*/eval/_done.json"))]
    if cfg.eval.enabled and finished:
        from harness.leaderboard.report import write_report
        from harness.leaderboard.table import build

        built = build(finished, root, "leaderboard", history=False, title=f"comparison {cfg.run_name}")
        console.print(built.files[1].read_text(encoding="utf-8"))
        reports = [write_report(run)["index"] for run in finished]  # each strategy's plots and outputs pages
        console.print(f"wrote: {', '.join(str(f) for f in built.files)}; reports: {', '.join(map(str, reports))}")
    for name, why in failed:
        console.print(f"failed: {name}: {why}")
    if failed:
        raise HarnessError(f"{len(failed)} of {len(subs)} strategies failed ({', '.join(n for n, _ in failed)}); "
                           "the others' stages are kept, a rerun resumes what is missing")
    return 0


def _options_of(cfg, strategy: str) -> dict:
    """In a comparison, ``strategy_options`` is keyed by strategy (``{self_rewarding: {judge_samples: 3}}``): each
    strategy checks only its own options."""
    opts = cfg.strategy_options or {}
    for key, value in opts.items():
        if key not in cfg.strategies:
            raise HarnessError(f"strategy_options.{key}: in a comparison (strategies: [...]) strategy_options is keyed "
                               f"by strategy, e.g. {{self_rewarding: {{judge_samples: 3}}}}; '{key}' is not one of "
                               f"{cfg.strategies}", key=f"strategy_options.{key}")
        if not isinstance(value, dict):
            raise HarnessError(f"strategy_options.{key} must be a mapping of that strategy's options; got {value!r}",
                               key=f"strategy_options.{key}")
    return dict(opts.get(strategy) or {})


def _run_one(cfg, args: argparse.Namespace, runs_dir: Path, share: bool = False, after: bool = True) -> int:
    from harness.pipeline import Pipeline

    throughput = None
    if args.throughput:
        if not args.dry_run:
            raise HarnessError("--throughput estimates a plan: use it with --dry-run")
        from harness.estimate import load_throughput

        throughput = load_throughput(args.throughput)
    pipe = Pipeline(cfg, runs_dir, offline_plan=args.dry_run, share=share)
    tasks = pipe.plan()
    pipe.apply_force(args.force)
    pipe.apply_until(args.until)
    notes = pipe.preflight(strict=not args.dry_run)
    if args.dry_run:
        _print_plan(pipe, tasks, notes, throughput)
        return 0
    _setup_logging(args.debug, pipe.layout.log)
    logging.getLogger("harness").info("run %s -> %s (%d stages, %d to do)", cfg.run_name, pipe.layout.root,
                                      len(tasks), sum(t.status not in ("skip", "held") for t in tasks))
    t0 = time.time()

    def on_task(t, what):
        if what == "start" and t.status != "skip":
            logging.getLogger("harness").info("%s: %s", t.label, t.status)

    pipe.run(on_task)
    _print_summary(pipe, tasks, time.time() - t0)
    held = [t.label for t in tasks if t.status == "held"]
    if held:
        from harness.ui import console

        console.print(f"stopped after {args.until} (--until): {len(held)} stage(s) not run ({', '.join(held)}); the "
                      "same command without --until goes on from here")
        return 0
    if cfg.eval.enabled and after:
        from harness.leaderboard.commands import after_run

        after_run(pipe.layout.root)
    return 0


def _plan_counts(pipe, t, w) -> str:
    """The plan's work column of task ``t``, from its counts ``w`` (harness.estimate.stage_work)."""
    cfg, n_prompts = w.cfg, w.prompts
    own = pipe.strategy.describe(t.stage, cfg, n_prompts) if t.iteration >= 1 else None
    if own is not None:
        return own
    if t.stage not in ("sample", "reward", "pairs", "train", "eval"):
        return "(the strategy's own stage)"
    if t.stage == "sample":
        return (f"{n_prompts * w.sample_languages} prompts x n={cfg.sample.n} = {w.samples} samples, "
                f"<= {w.samples * cfg.sample.max_tokens:,} new tokens")
    if t.stage == "reward":
        extra = f" (+{w.samples} self-translations)" if pipe.strategy.translate else ""
        return f"{2 * w.samples} sequences scored (policy + reference){extra}"
    if t.stage == "pairs":
        pl = w.pair_languages
        return f"<= {n_prompts * pl} pairs ({pl} language{'s' * (pl != 1)})"
    if t.stage == "eval":
        ec, n = pipe.cfg.eval, w.answers
        return (f"{n} X-AlpacaEval answers (<= {n * ec.max_tokens:,} tokens), {n} {ec.judge} judgements, "
                f"LC {ec.lc_source}")
    tc = cfg.train_for(t.iteration)
    if w.stage0_pairs is not None:
        n = len(w.stage0_pairs)
        src = f"{n} English pairs ({cfg.stage0.dataset})"
    else:
        n = n_prompts * w.pair_languages
        src = f"<= {n} pairs"
    per_step = tc.batch_size * tc.grad_accum * max(tc.accelerate.num_processes, 1)
    steps = int(-(-n // per_step) * tc.epochs)
    where = ""
    if tc.accelerate.num_processes > 1 or tc.accelerate.config_file or tc.accelerate.num_machines > 1:
        where = f"; accelerate launch, {tc.accelerate.num_processes} processes"
        if tc.accelerate.num_machines > 1:
            where += f" on {tc.accelerate.num_machines} nodes (srun)"
        if tc.accelerate.config_file:
            where += f" ({tc.accelerate.config_file})"
    return f"{src}, ~{steps} optimizer steps ({tc.method}, {tc.precision}, batch {per_step}{where})"


def _print_plan(pipe, tasks, notes: list[str], throughput=None) -> None:
    from rich.table import Table

    from harness.estimate import fmt_seconds, stage_estimate, stage_work
    from harness.ui import console

    cfg = pipe.cfg
    table = Table(title=f"plan: {cfg.run_name} -> {pipe.layout.root}")
    for col in ("stage", "status", "work", "hash") + (("estimate",) if throughput else ()):
        table.add_column(col)
    total, unknown = 0.0, []
    for t in tasks:
        w = stage_work(pipe, t)
        row = [t.label, t.status, _plan_counts(pipe, t, w), t.hash]
        if throughput and t.status in ("skip", "held"):
            row.append("done" if t.status == "skip" else "not run (--until)")
        elif throughput:
            secs, what, complete = stage_estimate(pipe, t, throughput, w)
            row.append(f"{fmt_seconds(secs)}{f' ({what})' if what else ''}")
            total += secs or 0.0
            unknown += [] if complete else [t.label]
        table.add_row(*row)
    console.print(table)
    if throughput:
        console.print(f"estimated time of what is left: about {fmt_seconds(total)} at the tokens/s of "
                      f"{throughput.source} (sample {throughput.sample:,.0f}, score {throughput.score:,.0f}, train "
                      f"{throughput.train:,.0f} per engine or process); rough: every response at max_tokens; prompt "
                      f"tokens, model loads and engine starts not counted{'; not estimated: ' + ', '.join(unknown) if unknown else ''}")
        if throughput.model and throughput.model != pipe.reference.name:
            console.print(f"[yellow]the throughputs were measured on {throughput.model}, this run uses "
                          f"{pipe.reference.name}:[/yellow] tokens/s scale roughly with 1 / parameters")
    console.print(f"models: pi_ref = {pipe.reference.name} ({pipe.reference.source}: {pipe.reference.path}); "
                  f"pi_0 = {pipe.given_pi0.name if pipe.given_pi0 else 'stage 0 (English DPO of pi_ref)'}; "
                  f"strategy = {cfg.strategy}; languages = {' '.join(cfg.languages)}; iterations = {cfg.iterations}")
    for d in pipe.downloads:
        console.print(f"prompts: {d} will be downloaded when the run starts (planned from prompts.limit; the "
                      "sample stages' hashes are provisional until then)")
    console.print("checked: the trl trainer config (DPOConfig, KTOConfig) of every train stage still to run"
                  + (", judge, LC source and reference outputs" if cfg.eval.enabled else ""))
    for note in notes:
        console.print(f"[yellow]this machine cannot run it as configured:[/yellow] {note}")
    console.print("dry run: nothing was loaded or written")


def _print_summary(pipe, tasks, seconds: float) -> None:
    from rich.table import Table

    from harness.io import read_json
    from harness.timing import fmt_split
    from harness.ui import console

    table = Table(title=f"run {pipe.cfg.run_name}: {seconds:.0f} s")
    for col in ("stage", "status", "seconds", "where the time went", "result"):
        table.add_column(col)
    for t in tasks:
        if t.status == "held":
            table.add_row(t.label, "not run (--until)", "", "", "")
            continue
        rec = read_json(pipe.layout.done_path(t.iteration, t.stage))
        c = rec.get("counts", {})
        secs = rec.get("seconds", 0)
        split = fmt_split(rec["time"]) if rec.get("time") else ""
        if t.stage == "sample":
            res = (f"{c.get('responses')} responses, {c.get('empty_responses')} empty, "
                   f"{c.get('truncated_responses')} truncated")
        elif t.stage == "reward":
            res = f"{c.get('responses')} rewards, mean {c.get('mean_reward', 0):.3f}"
        elif t.stage == "pairs":
            summ = read_json(pipe.layout.stage_dir(t.iteration, "pairs") / "summary.json")
            res = "; ".join(f"{lang}: a={s['alpha']:.3f} margin {s['mean_reward_margin']:.2f} "
                            f"len {s['mean_chosen_length']:.0f}/{s['mean_rejected_length']:.0f}"
                            f"{' degenerate ' + str(s['degenerate']) if s['degenerate'] else ''}"
                            if "alpha" in s else  # strategies without length control (LIDR)
                            f"{lang}: {s['pairs']} pairs, len {s['mean_chosen_length']:.0f}/"
                            f"{s['mean_rejected_length']:.0f}" for lang, s in summ.items())
        elif t.stage == "eval":
            wr, lc, ot = c.get("win_rate"), c.get("length_controlled_winrate"), c.get("on_target_rate")
            res = (f"{c.get('model')}: WR {_fmt(wr)}  LC {_fmt(lc)}  on-target {_fmt(ot, 100)}% "
                   f"({' '.join(c.get('languages', []))}; {c.get('judge_calls')} judge calls)")
        elif t.stage != "train":  # a strategy's own stage: its counts
            res = ", ".join(f"{k} {v}" for k, v in c.items())
        else:
            pc = c.get("param_change_l2")
            res = (f"{c.get('pairs')} pairs, {c.get('steps')} steps, loss {c.get('loss_first', 0):.3f} -> "
                   f"{c.get('loss_last', 0):.3f}, margin {c.get('reward_margin_first') or 0:.3f} -> "
                   f"{c.get('reward_margin_last') or 0:.3f}, |dtheta| {pc if pc is None else f'{pc:.4f}'}")
        status = {"skip": "skipped (done)", "shared": "shared (same hash)"}.get(t.status, "done")
        table.add_row(t.label, status, f"{secs:.1f}" if t.status not in ("skip", "shared") else f"({secs:.1f})",
                      split, res)
    if any(t.status in ("skip", "shared") for t in tasks):
        table.caption = "(seconds): when that stage first ran, not in this run"
    console.print(table)
    k = pipe.cfg.iterations
    final = "" if any(t.status == "held" for t in tasks) else \
        f"; final model: {pipe.layout.model_dir(k) if k else pipe.model(0).path}"
    console.print(f"wrote: {pipe.layout.root}/ (run.json, config.yaml, log.txt, iter_*/<stage>/){final}")


def _fmt(v, scale: float = 1.0) -> str:
    return "n/a" if v is None else f"{v * scale:.1f}"


def cmd_demo(args: argparse.Namespace) -> int:
    args.config = "demo"
    return cmd_run(args)


# -- eval ----------------------------------------------------------------------------------------------------------
def cmd_eval(args: argparse.Namespace) -> int:
    """Score one model (registered name or local folder) on X-AlpacaEval outside a run."""
    import json
    import re

    from rich.table import Table

    from harness.config import load_config
    from harness.evaluate import evaluate_model, preflight
    from harness.io import atomic_write_json
    from harness.models import resolve_model, with_template
    from harness.paths import RunLayout, runs_root
    from harness.judges import make_judge
    from harness.ui import console

    if args.decoding is not None and not args.outputs:
        raise HarnessError("--decoding describes given outputs: it only applies with --outputs")
    if args.endpoint and args.outputs:
        raise HarnessError("--endpoint generates the outputs, --outputs gives them: use one")
    files = _outputs_files(args.outputs, args.model, args.languages) if args.outputs else None
    if args.endpoint:
        from harness.backends import check_endpoint
        from harness.models import ModelSpec

        check_endpoint(args.endpoint, args.model)
        spec = ModelSpec(args.model, "endpoint", args.endpoint.rstrip("/"), description="OpenAI-compatible endpoint")
        args.overrides = [*args.overrides, "eval.backend=openai_compat"]
    else:
        spec = None if files else resolve_model(args.model, where="MODEL")
    label = args.model if files else spec.name
    name = args.run_name or "eval-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    overrides = [f"run_name={json.dumps(name)}", "eval.enabled=true", *args.overrides]
    if files:
        args.languages = list(files)
    if args.languages:
        overrides.append(f"eval.languages=[{','.join(args.languages)}]")
        overrides.append(f"languages=[{','.join(args.languages)}]")
    for key in ("limit", "judge", "judge_model", "judge_base_url", "reference", "lc_source", "max_tokens"):
        if getattr(args, key) is not None:
            overrides.append(f"eval.{key}={getattr(args, key)}")
    if args.df_gamed is not None:
        overrides.append(f"eval.df_gamed={json.dumps(args.df_gamed)}")  # quoted: a path stays a string in YAML
    if args.data_dir:
        overrides.append(f"data_dir={json.dumps(args.data_dir)}")
    for key in ("chat_template", "eot"):
        if getattr(args, key) is not None:
            overrides.append(f"models.{key}={json.dumps(getattr(args, key))}")
    if args.stop is not None:
        overrides.append(f"models.stop={json.dumps(args.stop)}")
    cfg, _ = load_config(None, overrides)
    # a checkpoint folder gets the tokenizer's template and EOS unless told otherwise (e.g. the paper's Llama-3 ones)
    if spec is not None and spec.source != "endpoint":  # an endpoint applies its own chat template
        spec = with_template(spec, cfg.models.chat_template, cfg.models.eot, cfg.models.stop)
    if args.df_gamed is not None and cfg.eval.lc_source != "official":
        raise HarnessError(f"--df-gamed only applies to --lc-source official (not {cfg.eval.lc_source})")
    preflight(cfg)  # API key, df_gamed.csv, reference outputs: before anything is loaded or written
    layout = RunLayout(runs_root(args.runs_dir) / name)
    _setup_logging(args.debug, layout.log)
    judge = make_judge(cfg)
    t0 = time.time()
    summary = evaluate_model(spec, label, layout.root / "eval", cfg, layout.judge_cache(judge.id), outputs=files)
    from harness.config import to_dict
    from harness.pipeline import package_versions

    source = ({"kind": "outputs", "name": label, "files": {k: str(v) for k, v in files.items()},
               "decoding": args.decoding or "given outputs (decoding unknown)"} if files else
              {"kind": spec.source if spec.source == "endpoint" else "checkpoint", "name": label})
    atomic_write_json(layout.run_json, {"command": sys.argv, "model": spec.to_dict() if spec else {"name": label},
                                        "source": source, "config": to_dict(cfg), "versions": package_versions()})
    table = Table(title=f"{label} on X-AlpacaEval ({time.time() - t0:.0f} s)")
    for col in ("language", "n", "WR ± se", "LC ± se", "on-target", "reference", "LC source"):
        table.add_column(col)

    def pm(value, se):  # None: undefined (e.g. one instruction: no standard error; too few rows for the LC GLM)
        return "n/a" if value is None else f"{value:.1f}" + ("" if se is None else f" ± {se:.1f}")

    for lang, m in summary["per_language"].items():
        table.add_row(lang, str(m["n"]), pm(m["win_rate"], m["standard_error"]),
                      pm(m["length_controlled_winrate"], m["lc_standard_error"]),
                      f"{100 * m['on_target_rate']:.0f}%", m["reference"], m["lc_source"])
    avg = summary["average"]
    table.add_row("average", "", _fmt(avg["win_rate"]), _fmt(avg["length_controlled_winrate"]),
                  _fmt(avg["on_target_rate"], 100) + "%", "", "")
    console.print(table)
    for lang, m in summary["per_language"].items():
        if m.get("lc_note"):
            console.print(f"LC n/a for {lang}: {m['lc_note']}")
    console.print(f"wrote: {layout.root / 'eval'}/<lang>/ (model_outputs.json, annotations.json, metrics.json), "
                  f"{layout.root / 'eval' / 'metrics.json'}; {summary['judge_calls']} judge calls")
    return 0


def _outputs_files(specs: list[str], model: str, languages: list[str] | None) -> dict[str, Path]:
    """``harness eval MODEL --outputs``: {lang: model_outputs.json} from ``lang=path`` pairs, or from a folder laid
    out as ``<lang>/<MODEL>/model_outputs.json`` (as the ICR authors publish their results)."""
    from harness.languages import get_language

    files: dict[str, Path] = {}
    for spec in specs:
        if "=" in spec:
            lang, _, path = spec.partition("=")
            get_language(lang)  # a one-line error naming the language if unknown
            p = Path(path).expanduser()
            if not p.is_file():
                raise HarnessError(f"--outputs {lang}=: model outputs file does not exist", p)
            files[lang] = p
            continue
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise HarnessError("--outputs: neither a folder nor LANG=FILE", folder)
        found = {d.name: d / model / "model_outputs.json" for d in sorted(folder.iterdir())
                 if (d / model / "model_outputs.json").is_file()}
        if not found:
            have = sorted({m.parent.name for m in folder.glob("*/*/model_outputs.json")})
            raise HarnessError(f"--outputs: no <lang>/{model}/model_outputs.json here (models found: "
                               f"{', '.join(have) or 'none'})", folder)
        files.update(found)
    if languages:
        missing = [lang for lang in languages if lang not in files]
        if missing:
            raise HarnessError(f"--outputs has no model outputs for language '{missing[0]}' (has: "
                               f"{' '.join(files)})")
        files = {lang: files[lang] for lang in languages}
    return files


# -- ls ------------------------------------------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> int:
    from rich.table import Table

    from harness.config import list_presets
    from harness.registry import KINDS, REGISTRY
    from harness.ui import console

    kinds = KINDS if args.kind is None else (args.kind,)
    if args.kind == "presets":
        kinds = ()
    for kind in kinds:
        table = Table(title=kind, show_header=True)
        table.add_column("name")
        table.add_column("origin")
        table.add_column("description")
        for e in REGISTRY.entries(kind):
            table.add_row(e.name, e.origin, e.description)
        console.print(table)
    if args.kind in (None, "presets"):
        console.print("presets (harness run NAME): " + ", ".join(list_presets()))
    for name, err in REGISTRY.broken_plugins.items():
        console.print(f"[red]broken plugin[/red] {name}: {err}")
    return 0


# -- bench ---------------------------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import run_bench
    from harness.registry import REGISTRY

    for flag, v in (("--prompts", args.prompts), ("--max-tokens", args.max_tokens), ("--repeats", args.repeats),
                    ("--long-tokens", args.long_tokens), ("--train-batch", args.train_batch)):
        if v < 1:
            raise HarnessError(f"{flag} must be >= 1, got {v}")
    for name in args.backends:
        try:
            REGISTRY.get("backends", name)
        except HarnessError as e:
            raise HarnessError(f"--backends: {e.message}") from None

    wrote = "nothing was written"
    if args.compare:
        from harness.bench import bench_compare

        bench_compare()
    elif args.train:
        from harness.bench import print_train

        print_train(steps=args.repeats, batch_size=args.train_batch)
    else:
        if args.save and args.no_train:
            raise HarnessError("--save writes the train step's tokens/s too: leave out --no-train")
        result = run_bench(args.backends, n_prompts=args.prompts, max_tokens=args.max_tokens, repeats=args.repeats,
                           long_tokens=args.long_tokens, train=not args.no_train, train_batch=args.train_batch)
        if args.save:
            from harness.bench import save_throughput

            path = save_throughput(result, Path(args.save))
            wrote = f"wrote {path} (use: harness run CONFIG --dry-run --throughput {path})"
    from harness.ui import console

    console.print(f"bench: {wrote}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str):
        print(f"harness: error: {message} (see: {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    from harness import __version__

    p = OneLineParser(prog="harness", description="Iterative implicit cross-lingual rewarding (ICR) "
                                "for multilingual preference alignment.")
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def run_args(sp):
        sp.add_argument("overrides", nargs="*", help="section.key=value overrides (values parsed as YAML)")
        sp.add_argument("--dry-run", action="store_true", help="print the plan with counts; load no model")
        sp.add_argument("--throughput", metavar="FILE", help="with --dry-run: estimate each stage's time from FILE's "
                        "tokens/s (sample, score, train; `harness bench --save FILE` measures them)")
        sp.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="redo STAGE (or K:STAGE) and everything after it")
        sp.add_argument("--until", metavar="STAGE", help="run up to and including STAGE (its first occurrence; "
                        "K:STAGE for iteration K, ref:eval for pi_ref's evaluation), then stop; the same command "
                        "without it goes on")
        sp.add_argument("--runs-dir", help="root of runs (default: $HARNESS_RUNS or ./runs)")
        sp.add_argument("--run-name", help="name of the run folder (default: the config's run_name)")
        sp.add_argument("--data-dir", help="local copy of the shared data (default: $HARNESS_DATA)")
        sp.add_argument("--debug", action="store_true", help="show tracebacks")

    r = sub.add_parser("run", help="run the ICR loop from a config file or preset", epilog=EPILOG_RUN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("config", help="YAML config file or preset name (harness ls presets)")
    run_args(r)
    r.set_defaults(fn=cmd_run)
    d = sub.add_parser("demo", help="run the packaged CPU demo (SmolLM2-135M, stage 0 + 2 iterations, en es de)")
    run_args(d)
    d.set_defaults(fn=cmd_demo)
    e = sub.add_parser("eval", help="score one model on X-AlpacaEval (WR, LC, language fidelity)")
    e.add_argument("model", help="registered model name or local Hugging Face folder; with --outputs, the name "
                   "of the model whose outputs are given")
    e.add_argument("--outputs", nargs="+", metavar="FOLDER_OR_LANG=FILE",
                   help="judge existing outputs (AlpacaEval model_outputs.json) instead of generating: a folder laid "
                   "out as <lang>/<MODEL>/model_outputs.json, or lang=path pairs")
    e.add_argument("--endpoint", metavar="URL", help="generate with MODEL as served by an OpenAI-compatible server "
                   "at URL (e.g. vLLM: http://127.0.0.1:8000/v1; key: $OPENAI_API_KEY)")
    e.add_argument("--decoding", help="with --outputs: how they were decoded (part of the comparability key), e.g. "
                   "'temperature=0.6 top_p=0.9 max_tokens=2048 seed=42'")
    e.add_argument("overrides", nargs="*", help="eval.key=value overrides")
    e.add_argument("--languages", nargs="+", help="X-AlpacaEval languages (default: en es de)")
    e.add_argument("--limit", type=int, help="instructions per language (deterministic subset; default all 805)")
    e.add_argument("--judge", help="judge name (harness ls judges)")
    e.add_argument("--judge-model", help="local judge: model name or folder (default: smollm2-135m-instruct); "
                   "API judge: served model name (default: gpt-4-1106-preview)")
    e.add_argument("--judge-base-url", help="OpenAI-compatible base URL of an API judge (key: $OPENAI_API_KEY)")
    e.add_argument("--reference", help="reference outputs: generator name or model_outputs.json")
    e.add_argument("--lc-source", choices=["official", "estimated", "minimal"])
    e.add_argument("--df-gamed", metavar="PATH", help="with --lc-source official: a local copy of AlpacaEval's "
                   "df_gamed.csv (default: the Hugging Face cache or a download)")
    e.add_argument("--max-tokens", type=int)
    e.add_argument("--chat-template", help="prompt format of MODEL: tokenizer (a folder's default), llama3_no_system "
                   "(the paper's checkpoints) or a string with {instruction}")
    e.add_argument("--eot", help="end-of-turn string of MODEL (default: its tokenizer's EOS), e.g. '<|eot_id|>'")
    e.add_argument("--stop", nargs="+", help="stop strings for generation (default: the end-of-turn string)")
    e.add_argument("--runs-dir")
    e.add_argument("--run-name")
    e.add_argument("--data-dir")
    e.add_argument("--debug", action="store_true")
    e.set_defaults(fn=cmd_eval)
    ls = sub.add_parser("ls", help="list registered components (models, languages, strategies, judges, backends)")
    ls.add_argument("kind", nargs="?", choices=["models", "languages", "strategies", "judges", "backends", "presets"])
    ls.add_argument("--debug", action="store_true")
    ls.set_defaults(fn=cmd_ls)
    b = sub.add_parser("bench", help="sampling, scoring and training throughput on the demo model, against the "
                                     "authors' scorer and the machine's measured matmul peak")
    b.add_argument("--backends", nargs="+", default=["transformers", "vllm"])
    b.add_argument("--prompts", type=int, default=16)
    b.add_argument("--max-tokens", type=int, default=64)
    b.add_argument("--repeats", type=int, default=3, help="timed repeats per row (the median and spread are shown)")
    b.add_argument("--long-tokens", type=int, default=768, help="length of the one long response added per prompt to "
                   "the scored set (real responses reach 2,400 tokens)")
    b.add_argument("--train-batch", type=int, default=8, help="pairs per optimizer step in the training row")
    b.add_argument("--no-train", action="store_true", help="leave out the training row")
    b.add_argument("--save", metavar="FILE", help="write the measured tokens/s to FILE, the throughput file of "
                   "`harness run CONFIG --dry-run --throughput FILE`")
    b.add_argument("--debug", action="store_true")
    b.add_argument("--compare", action="store_true",
                   help="instead: time harness compare on 2 models x 5 languages x 805 instructions (no model)")
    b.add_argument("--train", action="store_true",
                   help="instead: the train stage's DPO + NLL step: tokens/s and fraction of the matmul peak (bf16 "
                        "where the machine has bf16 kernels, else fp32)")
    b.set_defaults(fn=cmd_bench)
    from harness.annotations import add_score_annotations_parser

    add_score_annotations_parser(sub)
    from harness.leaderboard.commands import add_parsers

    add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    _quiet_third_party()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # overrides may come before or after flags: `harness run demo --dry-run train.beta=0.2`
    extra = [x for x in rest if "=" in x and not x.startswith("-")]
    flags = [x for x in rest if x.startswith("-")]
    if flags:
        parser.error(f"unrecognized arguments: {' '.join(flags)}")
    stray = [x for x in rest if x not in extra]
    if stray and hasattr(args, "overrides"):
        parser.error(f"override '{stray[0]}' is not of the form section.key=value")
    if len(extra) != len(rest) or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(x for x in rest if x not in extra) or ' '.join(rest)}")
    # a list flag swallows overrides that follow it (`--languages de es eval.limit=3`): give them back
    for name in ("languages", "backends", "stop"):
        values = getattr(args, name, None)
        if values and hasattr(args, "overrides"):
            extra += [v for v in values if "=" in v]
            setattr(args, name, [v for v in values if "=" not in v])
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return args.fn(args) or 0
    except HarnessError as e:
        if getattr(args, "debug", False):
            raise
        print(f"harness: error: {e.render()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("harness: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
