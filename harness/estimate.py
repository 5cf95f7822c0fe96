"""Time estimates of a planned run: ``harness run CONFIG --dry-run --throughput FILE``.

FILE (YAML or JSON) gives tokens per second of ONE engine or training process, measured on the model and hardware
the run will use (``harness bench --save FILE`` writes one for the demo model on this machine)::

    model: llama-3.1-8b-instruct   # what the figures were measured on (compared with models.reference)
    sample: 2500                   # new tokens/s of one sampling engine, a whole chunk of prompts in flight
    score: 9000                    # tokens/s of one scoring engine (reward passes, local judges)
    train: 1800                    # tokens/s of one training process (forward + backward, optimizer included)
    judge: 2.0                     # optional: judgements/s of an API judge

A stage's estimate is its work over the throughput times its engines (``backend.replicas``) or processes
(``train.accelerate.num_processes``). The work is rough: every response at ``max_tokens``; prompt tokens, model
loads and engine starts are not counted; a train stage counts its responses (2 per pair, at most ``train.max_length``) plus a forward pass
over them for the precomputed reference (a third of a training step's cost).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

KEYS = {"sample": "new tokens/s per sampling engine", "score": "tokens/s per scoring engine",
        "train": "tokens/s per training process", "judge": "judgements/s of an API judge (optional)"}
JUDGE_TEMPLATE_TOKENS = 400  # the AlpacaEval 2 judge prompt around the instruction and the two outputs


@dataclass
class Throughput:
    sample: float
    score: float
    train: float
    judge: float | None = None
    model: str | None = None
    source: str = ""


def load_throughput(path: str | Path) -> Throughput:
    """Read FILE; a missing file, a missing or unknown key or a value that is not a positive number is one line
    naming the file."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise HarnessError(f"cannot read the throughput file: {e.strerror}", path) from None
    except yaml.YAMLError as e:
        raise HarnessError(f"not YAML or JSON: {str(e).splitlines()[0]}", path) from None
    if not isinstance(data, dict):
        raise HarnessError("a throughput file is a mapping: sample, score, train (tokens/s), judge, model", path)
    unknown = sorted(set(data) - set(KEYS) - {"model", "measured", "machine"})
    if unknown:
        raise HarnessError(f"unknown key '{unknown[0]}' (known: model, {', '.join(KEYS)})", path)
    values = {}
    for key in KEYS:
        v = data.get(key)
        if v is None and key != "judge":
            raise HarnessError(f"'{key}' is missing ({KEYS[key]})", path)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            raise HarnessError(f"'{key}' must be a positive number ({KEYS[key]}), got {v!r}", path)
        values[key] = None if v is None else float(v)
    return Throughput(**values, model=data.get("model"), source=str(path))


@dataclass
class StageWork:
    """What one planned stage works on; the plan's work column and its estimate both read it."""

    cfg: object  # the iteration's config
    prompts: int = 0  # prompts of the iteration
    sample_languages: int = 0
    pair_languages: int = 0
    samples: int = 0  # prompts x sample languages x sample.n
    answers: int = 0  # eval: X-AlpacaEval answers (instructions x languages)
    stage0_pairs: list | None = None  # stage 0's English pairs (train of iteration 0)


def stage_work(pipe, t) -> StageWork:
    """The counts of task ``t`` of ``pipe`` (a planned run: nothing is loaded but the prompt and pair files)."""
    cfg = pipe.cfg.for_iteration(t.iteration) if t.iteration >= 1 else pipe.cfg
    w = StageWork(cfg)
    if t.stage == "eval":
        from harness.data import eval_subset

        w.answers = len(eval_subset(pipe.cfg.eval.limit)) * len(pipe.cfg.eval.languages or pipe.cfg.languages)
    elif t.iteration >= 1:
        w.prompts = pipe.prompts(t.iteration)[1]
        w.sample_languages = len(pipe.strategy.sample_languages(cfg.languages))
        w.pair_languages = len(pipe.strategy.pair_languages(cfg.languages))
        w.samples = w.prompts * w.sample_languages * cfg.sample.n
    elif t.stage == "train":
        from harness.data import load_english_prefs

        w.stage0_pairs = load_english_prefs(cfg.stage0.dataset, cfg.stage0.limit)[0]
    return w


def stage_estimate(pipe, t, tp: Throughput, w: StageWork) -> tuple[float | None, str, bool]:
    """(seconds or None, what they cover, whether they cover the whole stage) of task ``t`` of ``pipe``, whose work
    is ``w``, at the throughputs ``tp``."""
    cfg = w.cfg
    replicas = cfg.backend.replicas
    if t.stage == "eval":
        ec = pipe.cfg.eval
        n = w.answers
        seconds = n * ec.max_tokens / tp.sample
        if ec.judge.startswith("local"):
            seconds += n * (JUDGE_TEMPLATE_TOKENS + 2 * ec.max_tokens) / tp.score
            return seconds, f"{n} answers + {n} local judgements", True
        if tp.judge is None:
            return seconds, f"{n} answers; the API judge not estimated (no 'judge' rate)", False
        return seconds + n / tp.judge, f"{n} answers + {n} API judgements", True
    if t.stage == "pairs":
        return 0.0, "", True
    samples = w.samples
    if t.stage == "sample":
        tokens = samples * cfg.sample.max_tokens
        return tokens / (tp.sample * replicas), f"{tokens:,} new tokens / {replicas} engine(s)", True
    if t.stage == "reward":
        tokens = 2 * samples * cfg.sample.max_tokens
        seconds = tokens / (tp.score * replicas)
        if pipe.strategy.translate:
            seconds += samples * cfg.reward.translate_max_tokens / tp.sample
        return seconds, f"{tokens:,} response tokens scored / {replicas} engine(s)", True
    if t.stage == "train":
        tc = cfg.train_for(t.iteration)
        if w.stage0_pairs is not None:  # about 4 characters per token
            tokens = sum(min(tc.max_length, (len(p.prompt) + len(side)) // 4)
                         for p in w.stage0_pairs for side in (p.chosen, p.rejected))
        else:
            tokens = w.prompts * w.pair_languages * 2 * min(tc.max_length, cfg.sample.max_tokens)
        procs = max(tc.accelerate.num_processes, 1)
        return (tokens * tc.epochs * (1 + 1 / 3) / (tp.train * procs),
                f"{int(tokens * tc.epochs):,} tokens / {procs} process(es)", True)
    return None, "a strategy's own stage: not estimated", False


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
