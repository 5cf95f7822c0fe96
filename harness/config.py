"""Typed run configuration: defaults < YAML file < command-line ``section.key=value`` overrides.

Every section is a dataclass; unknown keys fail naming the file, the key and the nearest valid name. Values are
coerced to the field's type at load. ``iterations_override`` ("per_iteration" in YAML) holds settings that apply
to one iteration only, e.g. the paper's upper bound 500 at iteration 2::

    per_iteration:
      2: {pairs: {upper_bound: 500}}
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.errors import HarnessError


@dataclass
class ModelsConfig:
    reference: str = "smollm2-135m-instruct"
    """pi_ref: registered model name or local folder."""
    policy: str | None = None
    """pi_0 (an English DPO model of pi_ref). None: stage 0 trains it from `stage0.dataset`."""
    chat_template: str | None = None
    """Prompt format of pi_ref, pi_0 and the trained models (default: the registered model's; a local folder: the
    tokenizer's own): tokenizer, a named template (llama3_no_system) or a string with {instruction}."""
    eot: str | None = None
    """End-of-turn string appended to responses for scoring and training (default: the model's, else its EOS)."""
    stop: list | None = None
    """Stop strings for generation (default: the model's, else [eot])."""


@dataclass
class PromptsConfig:
    source: str = "ultrafeedback-parallel/demo-subset"
    """Parallel prompts: a folder relative to the data directory, an absolute folder, or upstream:random_N."""
    limit: int | None = None
    """Use the first N prompts (the files are parallel: the same N ids in every language)."""


@dataclass
class BackendConfig:
    sample: str = "transformers"
    """Backend used for sampling (transformers or vllm)."""
    score: str = "transformers"
    """Backend used for log-probabilities."""
    threads: int | None = None
    """CPU threads per process (None: an even share of the cores among the processes that share them: all of them
    for one process, cores / replicas for each replica, cores / processes for each CPU training process under
    accelerate)."""
    replicas: int = 1
    """Sampling and scoring engines run side by side, each in its own process with its share of the cores (data
    parallel); the responses and rewards are the same whatever the number (harness.replicas)."""
    replicas_on: str = "local"
    """Where replicas run: 'local' (processes on this machine) or 'ray' (actors of a Ray cluster, across its nodes:
    the one RAY_ADDRESS names or `ray start` made on this node, else a fresh Ray instance on this machine)."""
    options: dict = field(default_factory=dict)
    """Passed through to the backend (vLLM engine options: tensor_parallel_size, gpu_memory_utilization, ...)."""


@dataclass
class SampleConfig:
    n: int = 4
    temperature: float = 0.9
    top_p: float = 1.0
    max_tokens: int = 64
    chunk: int = 8
    """Prompts per resumable unit."""
    dtype: str | None = None
    """Sampling precision (None: the model's own, float32 for the demo model). bfloat16 samples as vLLM does on
    GPUs; it is 2-3x faster on CPUs with AMX and 4x slower on CPUs without AVX-512. auto: bfloat16 where it is fast
    here, else float32 (harness.hardware). Rewards are scored in ``reward.dtype`` whatever this is."""


@dataclass
class RewardConfig:
    reference: str = "pi_ref"
    """pi_ref (default) or previous (pi_{t-1} from iteration 2 on)."""
    logprob_mode: str = "standard"
    """standard: all response tokens + end-of-turn; code_exact: the authors' shifted mask (drops the first token)."""
    round_decimals: int | None = 4
    """Round each log-prob sum before the difference, as the authors' code (None: no rounding)."""
    dtype: str = "float32"
    """Scoring precision; bf16 is off by whole nats on long responses."""
    beta: float | None = None
    """Multiply rewards by this beta (None: no beta, as in the code; fixes the alpha scale)."""
    translate_max_tokens: int = 256
    """translate_en strategy: greedy self-translation length."""
    chunk: int = 16
    """Prompts per resumable unit."""


@dataclass
class PairsConfig:
    length_control: bool = True
    alpha_step: float = 0.001
    alpha_max: float = 1.0
    length_unit: str = "chars"
    """chars (as in the code) or tokens."""
    upper_bound: float | None = None
    """Cap on the chosen length-adjusted score (the paper: 500 at iteration 2)."""
    drop_degenerate: bool = False
    """Drop prompts whose chosen and rejected response coincide (default: keep and count them)."""


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: Any = "all-linear"


ACCELERATE_CONFIGS = Path(__file__).parent / "presets" / "accelerate"


def accelerate_config_names() -> list[str]:
    """The accelerate configs shipped with harness (train.accelerate.config_file: NAME)."""
    return sorted(p.stem for p in ACCELERATE_CONFIGS.glob("*.yaml"))


def accelerate_config_path(value: str) -> Path:
    """A shipped accelerate config by name (ddp, fsdp, zero3), else the file ``value`` names."""
    if value in accelerate_config_names():
        return ACCELERATE_CONFIGS / f"{value}.yaml"
    return Path(value).expanduser()


@dataclass
class AccelerateConfig:
    config_file: str | None = None
    """accelerate config passed to `accelerate launch --config_file`: a shipped one by name (ddp, fsdp, zero3:
    harness/presets/accelerate/) or a file."""
    num_processes: int = 1
    """>1 launches the train stage through `accelerate launch`: the processes of all machines together."""
    num_machines: int = 1
    """>1: the train stage runs on that many nodes of the Slurm allocation harness runs in, one `accelerate launch`
    per node started by `srun` (num_processes / num_machines processes each; the first node is the rendezvous)."""
    extra_args: list = field(default_factory=list)


@dataclass
class TrainConfig:
    objective: str = "dpo"
    """dpo (DPO + NLL, the paper's) or kto (TRL's KTOTrainer on the pairs as unpaired examples: chosen desirable,
    rejected undesirable; no NLL term, so train.nll_weight must be 0)."""
    method: str = "full"
    """full or lora."""
    beta: float = 0.1
    nll_weight: float = 1.0
    """Weight of the NLL term on the chosen response (TRL loss_type [sigmoid, sft])."""
    learning_rate: float = 5e-7
    epochs: float = 1.0
    batch_size: int = 1
    grad_accum: int = 1
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    max_length: int = 4096
    precision: str = "fp32"
    """fp32, bf16 (GPU), bf16_cpu (bf16 autocast on CPU) or auto (bf16 on a GPU, bf16_cpu on a CPU with bf16
    kernels, else fp32; resolved when the config is loaded, see harness.hardware)."""
    gradient_checkpointing: bool = False
    save_steps: int | None = None
    """Save resumable trainer checkpoints every N steps (None: an interrupted train stage restarts)."""
    save_total_limit: int | None = 2
    """Keep at most this many checkpoints (the newest complete one is resumed after a kill)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    accelerate: AccelerateConfig = field(default_factory=AccelerateConfig)
    extra: dict = field(default_factory=dict)
    """Passed through to trl.DPOConfig (trl.KTOConfig with objective kto)."""


@dataclass
class Stage0Config:
    dataset: str = "builtin:english_prefs"
    """English preference pairs for pi_0: builtin:english_prefs, a local JSONL (prompt/chosen/rejected) or
    hub:HuggingFaceH4/ultrafeedback_binarized."""
    limit: int | None = None
    train: dict = field(default_factory=dict)
    """Overrides of the `train` section for stage 0."""


@dataclass
class EvalConfig:
    enabled: bool = False
    """Score pi_ref, pi_0 and every pi_k on X-AlpacaEval after the loop."""
    languages: list | None = None
    """Default: the run's languages."""
    limit: int | None = None
    """Instructions per language: a deterministic subset spread over the 805 ids (None: all 805)."""
    temperature: float = 0.6
    top_p: float = 0.9
    max_tokens: int = 2048
    seed: int = 42
    backend: str | None = None
    """Generation backend (default: backend.sample)."""
    dtype: str | None = None
    """Generation precision (None: the model's own; auto as sample.dtype). The local judges score in float32
    whatever this is."""
    chunk: int = 8
    """Prompts per generation call and per resumable unit; the evaluated languages share the calls."""
    judge: str = "local_logprob"
    judge_model: str | None = None
    """Local judges: a model name or folder (default: models.reference); API judges: the served model name
    (default: gpt-4-1106-preview)."""
    judge_base_url: str | None = None
    """OpenAI-compatible base URL for API judges (default: $OPENAI_BASE_URL, else api.openai.com)."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself is never in a config)."""
    judge_concurrency: int = 4
    reference: str = "gpt-4-turbo-2024-04-09"
    """Reference outputs: the shipped generator name, or a model_outputs.json."""
    references: dict = field(default_factory=dict)
    """Per-language reference where the default has none (ar it ja ko): {lang: MODEL or model_outputs.json}."""
    lc_source: str = "estimated"
    """official (AlpacaEval's df_gamed.csv), estimated (shipped, offline) or minimal."""
    df_gamed: str | None = None
    """lc_source official: a local copy of AlpacaEval's df_gamed.csv (default: the Hugging Face cache or a download)."""


@dataclass
class RunConfig:
    run_name: str = "run"
    seed: int = 42
    data_dir: str | None = None
    """Local copy of the shared data (else $HARNESS_DATA)."""
    languages: list = field(default_factory=lambda: ["en", "es", "de"])
    strategy: str = "cross_lingual"
    strategies: list = field(default_factory=list)
    """Several strategies from the same pi_0 in one command (a comparison): one run per strategy under
    runs/<run_name>/<strategy>/, stages with equal hashes done once and shared, one leaderboard of them all."""
    strategy_options: dict = field(default_factory=dict)
    """Settings of the strategy itself, checked by it (e.g. {judge_samples: 3} for self_rewarding; see its docstring).
    In a comparison, keyed by strategy: {self_rewarding: {judge_samples: 3}}."""
    iterations: int = 2
    models: ModelsConfig = field(default_factory=ModelsConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage0: Stage0Config = field(default_factory=Stage0Config)
    eval: EvalConfig = field(default_factory=EvalConfig)
    per_iteration: dict = field(default_factory=dict)
    """{iteration: {section: {key: value}}}: settings for one iteration only."""

    # -- derived ---------------------------------------------------------------------------------------------------
    def for_iteration(self, k: int) -> "RunConfig":
        """This config with the per-iteration overrides of iteration k applied."""
        over = self.per_iteration.get(k) or self.per_iteration.get(str(k))
        if not over:
            return self
        data = to_dict(self)
        data.pop("per_iteration")
        merged = _deep_merge(data, over)
        return from_dict(merged, where=f"per_iteration.{k}")

    def train_for(self, k: int) -> TrainConfig:
        """The train settings of iteration k (stage 0: `train` with the `stage0.train` overrides)."""
        if k == 0:
            if not self.stage0.train:
                return self.train
            return _build(TrainConfig, _deep_merge(to_dict(self.train), self.stage0.train), None,
                          prefix="stage0.train.")
        return self.for_iteration(k).train

    def validate(self, where: str | None = None) -> None:
        """Check every value against its allowed range or names, here and in each per_iteration section, so that a
        bad setting fails at load (and in --dry-run), never after a model was loaded."""
        _check(self, where, "")
        try:
            self.train_for(0)
        except HarnessError as e:
            raise HarnessError(e.message, where, key=e.key) from None
        _check_train(self.train_for(0), where, "stage0.train.")
        for k, over in self.per_iteration.items():
            key = f"per_iteration.{k}"
            if not str(k).isdigit() or not 1 <= int(k) <= max(self.iterations, 1):
                raise HarnessError(f"per_iteration key '{k}' is not an iteration in 1..{self.iterations}", where,
                                   key=key)
            if not isinstance(over, dict):
                raise HarnessError(f"{key} must be a mapping of sections ({', '.join(PER_ITERATION_SECTIONS)}), "
                                   f"got {over!r}", where, key=key)
            for section in over:
                if section not in PER_ITERATION_SECTIONS:
                    raise HarnessError(f"'{key}.{section}' cannot change per iteration (allowed: "
                                       f"{', '.join(PER_ITERATION_SECTIONS)})", where, key=f"{key}.{section}")
            try:
                ck = self.for_iteration(int(k))
            except HarnessError as e:
                raise HarnessError(e.message, where, key=key) from None
            _check(ck, where, key + ".")


PER_ITERATION_SECTIONS = ("prompts", "backend", "sample", "reward", "pairs", "train")
# transformers.trainer_utils.SchedulerType (tests/test_wiring.py checks the list against the installed version)
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
DTYPES = ("float32", "bfloat16", "float16")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _in_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, optional: bool = False):
    def ok(v):
        if v is None:
            return optional
        return (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or v <= hi)
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"<= {hi}")
    return ok, " and ".join(parts) + (" (or null)" if optional else "")


def _one_of(*allowed: str, optional: bool = False):
    return (lambda v: (v is None and optional) or v in allowed), "one of " + ", ".join(allowed)


# (key, (predicate, what it must be)) for every bounded setting; train.* rules also apply to stage0.train
RULES = [
    ("iterations", _in_range(0)),
    ("prompts.limit", _in_range(1, optional=True)),
    ("backend.threads", _in_range(1, optional=True)),
    ("backend.replicas", _in_range(1)),
    ("backend.replicas_on", _one_of("local", "ray")),
    ("sample.n", (lambda v: v >= 2, ">= 2 (a preference pair needs two responses)")),
    ("sample.temperature", _in_range(0)),
    ("sample.top_p", _in_range(0, 1, lo_open=True)),
    ("sample.max_tokens", _in_range(1)),
    ("sample.chunk", _in_range(1)),
    ("sample.dtype", _one_of(*DTYPES, "auto", optional=True)),
    ("reward.reference", _one_of("pi_ref", "previous")),
    ("reward.logprob_mode", _one_of("standard", "code_exact")),
    ("reward.round_decimals", _in_range(0, optional=True)),
    ("reward.dtype", _one_of(*DTYPES)),
    ("reward.beta", _in_range(0, lo_open=True, optional=True)),
    ("reward.translate_max_tokens", _in_range(1)),
    ("reward.chunk", _in_range(1)),
    ("pairs.alpha_step", _in_range(0, 1, lo_open=True)),
    ("pairs.alpha_max", _in_range(0, lo_open=True)),
    ("pairs.length_unit", _one_of("chars", "tokens")),
    ("eval.limit", _in_range(1, optional=True)),
    ("eval.temperature", _in_range(0)),
    ("eval.top_p", _in_range(0, 1, lo_open=True)),
    ("eval.max_tokens", _in_range(1)),
    ("eval.chunk", _in_range(1)),
    ("eval.dtype", _one_of(*DTYPES, "auto", optional=True)),
    ("eval.judge_concurrency", _in_range(1)),
    ("eval.lc_source", _one_of("official", "estimated", "minimal")),
]
TRAIN_RULES = [
    ("objective", _one_of("dpo", "kto")),
    ("method", _one_of("full", "lora")),
    ("beta", _in_range(0, lo_open=True)),
    ("nll_weight", _in_range(0)),
    ("learning_rate", _in_range(0, lo_open=True)),
    ("epochs", _in_range(0, lo_open=True)),
    ("batch_size", _in_range(1)),
    ("grad_accum", _in_range(1)),
    ("lr_scheduler", _one_of(*LR_SCHEDULERS)),
    ("warmup_ratio", _in_range(0)),
    ("max_length", _in_range(2)),
    ("precision", _one_of("fp32", "bf16", "bf16_cpu", "auto")),
    ("save_steps", _in_range(1, optional=True)),
    ("save_total_limit", _in_range(1, optional=True)),
    ("lora.r", _in_range(1)),
    ("lora.alpha", _in_range(0, lo_open=True)),
    ("lora.dropout", _in_range(0, 1)),
    ("accelerate.num_processes", _in_range(1)),
    ("accelerate.num_machines", _in_range(1)),
    ("accelerate.config_file", (lambda v: v is None or accelerate_config_path(str(v)).is_file(),
                                "a shipped accelerate config (ddp, fsdp, zero3) or an existing file")),
]


def _check_train(tc: TrainConfig, where: str | None, prefix: str) -> None:
    for key, (ok, what) in TRAIN_RULES:
        v = _get(tc, key)
        if not ok(v):
            raise HarnessError(f"{prefix}{key} must be {what}; got {v!r}", where, key=prefix + key)
    acc = tc.accelerate
    if acc.num_processes % acc.num_machines:
        raise HarnessError(f"{prefix}accelerate.num_processes must be a multiple of accelerate.num_machines "
                           f"({acc.num_machines}); got {acc.num_processes}", where,
                           key=prefix + "accelerate.num_processes")
    if tc.objective == "kto" and tc.nll_weight > 0:
        raise HarnessError(f"{prefix}nll_weight {tc.nll_weight} has no counterpart in TRL's KTOTrainer: set "
                           f"{prefix}nll_weight: 0 with {prefix}objective: kto", where, key=prefix + "nll_weight")
    if tc.objective == "kto" and tc.batch_size < 2:
        raise HarnessError(f"{prefix}batch_size must be >= 2 with {prefix}objective: kto (TRL's KTO estimates its KL "
                           f"term from the other examples of a batch); got {tc.batch_size}", where,
                           key=prefix + "batch_size")
    if tc.warmup_ratio >= 1 and tc.warmup_ratio != int(tc.warmup_ratio):
        raise HarnessError(f"{prefix}warmup_ratio must be a ratio < 1 or a whole number of steps; got "
                           f"{tc.warmup_ratio}", where, key=prefix + "warmup_ratio")


def _check(cfg: "RunConfig", where: str | None, prefix: str) -> None:
    """Names, ranges and registry entries of one (possibly per-iteration) config; keys are reported with prefix."""
    from harness.registry import REGISTRY

    def fail(key: str, message: str):
        sep = " " if message.startswith(("must ", "is ")) else ": "
        raise HarnessError(f"{prefix}{key}{sep}{message}", where, key=prefix + key)

    for key, (ok, what) in RULES:
        v = _get(cfg, key)
        if not ok(v):
            fail(key, f"must be {what}; got {v!r}")
    _check_train(cfg.train, where, prefix + "train.")
    if cfg.backend.replicas_on == "ray" and cfg.backend.replicas > 1:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            fail("backend.replicas_on", "is 'ray', but Ray is not installed: pip install 'ray>=2.40' (or "
                 "./install.sh dev), on every node of the cluster")
    if cfg.pairs.alpha_step > cfg.pairs.alpha_max:
        fail("pairs.alpha_step", f"must be <= pairs.alpha_max ({cfg.pairs.alpha_max}); got {cfg.pairs.alpha_step}")
    name = str(cfg.run_name)
    if not name.strip() or name in (".", "..") or "/" in name or "\\" in name:
        fail("run_name", f"must be a plain folder name; got {name!r}")
    for key, langs in (("languages", cfg.languages), ("eval.languages", cfg.eval.languages or [])):
        if key == "languages" and not langs:
            fail(key, "is empty")
        dup = next((x for i, x in enumerate(langs) if x in langs[:i]), None)
        if dup is not None:
            fail(key, f"'{dup}' is listed twice")
        for lang in langs:
            try:
                REGISTRY.get("languages", str(lang))
            except HarnessError as e:
                fail(key, e.message)
    for key, kind, name in (("strategy", "strategies", cfg.strategy), ("backend.sample", "backends", cfg.backend.sample),
                            ("backend.score", "backends", cfg.backend.score), ("eval.judge", "judges", cfg.eval.judge),
                            ("eval.backend", "backends", cfg.eval.backend)):
        if name is None:
            continue
        try:
            REGISTRY.get(kind, name)
        except HarnessError as e:
            fail(key, e.message)
    from harness.models import check_template_settings

    try:
        check_template_settings(cfg.models.chat_template, cfg.models.eot, cfg.models.stop)
    except HarnessError as e:
        fail(e.key or "models", e.message)


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("options", "extra", "per_iteration"):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, key: str, where: str | None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except HarnessError:
                continue
        raise HarnessError(f"'{key}': cannot use {value!r} (expected {tp})", where, key=key)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise HarnessError(f"'{key}' must be a mapping, got {value!r}", where, key=key)
        return _build(tp, value, where, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise HarnessError(f"'{key}' must be true or false, got {value!r}", where, key=key)
    if tp in (int, float):
        if isinstance(value, bool) or value is None:
            raise HarnessError(f"'{key}' must be a number, got {value!r}", where, key=key)
        try:
            if tp is int and float(value) != int(float(value)):
                raise ValueError
            return tp(float(value)) if tp is int else float(value)
        except (TypeError, ValueError):
            raise HarnessError(f"'{key}' must be {'an integer' if tp is int else 'a number'}, got {value!r}",
                               where, key=key) from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise HarnessError(f"'{key}' must be a string, got {value!r}", where, key=key)
        if isinstance(value, bool):  # YAML reads on/off/yes/no as booleans
            raise HarnessError(f"'{key}' must be a string, got {value!r} (quote it)", where, key=key)
        return str(value)
    if tp is list or origin is list:
        if isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise HarnessError(f"'{key}' must be a list, got {value!r}", where, key=key)
        return [str(v) if key == "languages" else v for v in value]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise HarnessError(f"'{key}' must be a mapping, got {value!r}", where, key=key)
        return dict(value)
    return value


def _build(cls: type, data: dict, where: str | None, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise HarnessError(f"unknown config key '{prefix}{key}'{hint}", where, key=prefix + str(key))
        kwargs[key] = _coerce(value, hints[key], prefix + key, where)
    return cls(**kwargs)


def from_dict(data: dict, where: str | None = None) -> RunConfig:
    if not isinstance(data, dict):
        raise HarnessError("a config must be a YAML mapping", where)
    return _build(RunConfig, data, where)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.beta=0.2`` -> (["train", "beta"], 0.2). The value is parsed as YAML (lists: ``languages=[de,zh]``)."""
    if "=" not in text:
        raise HarnessError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> tuple[RunConfig, dict]:
    """Load YAML (or ``base``), apply overrides; returns the config and the merged plain dict.

    An error in a value that a command-line override set names that override, not the file."""
    data: dict = copy.deepcopy(base) if base else {}
    where = None
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.exists():
            raise HarnessError("config file does not exist", p)
        if p.is_dir():
            raise HarnessError("config is a directory, not a YAML file", p)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise HarnessError(f"config is not UTF-8 text (byte {e.start})", p) from None
        except OSError as e:
            raise HarnessError(f"cannot read config: {e.strerror}", p) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise HarnessError(f"malformed YAML: {getattr(e, 'problem', e)}", p,
                               mark.line + 1 if mark else None) from None
        if not isinstance(loaded, dict):
            raise HarnessError("a config must be a YAML mapping", p)
        data = _deep_merge(data, loaded)
    applied: list[tuple[str, str]] = []
    for ov in overrides:
        keys, value = parse_override(ov)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise HarnessError(f"'{k}' is not a section", f"override {ov}")
        node[keys[-1]] = value
        applied.append((ov, ".".join(keys)))
    _resolve_auto(data)
    try:
        cfg = from_dict(data, where)
        cfg.validate(where)
    except HarnessError as e:
        culprit = _override_for(e.key, applied)
        if culprit is not None:
            raise HarnessError(e.message, f"override {culprit}", key=e.key) from None
        raise
    return cfg, data


def _resolve_auto(data: dict) -> None:
    """``auto`` precisions -> what is fast on this machine (harness.hardware), before anything reads them: the
    stage hashes, the trainer and the backends see the concrete value, so a run moved to a machine that resolves
    differently reruns what changed."""
    from harness.hardware import resolve_dtype, resolve_precision

    def section(node, *path):  # the dict at ``path`` under ``node``, or None
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else None

    per_iteration = data.get("per_iteration")
    for top in [data, *(per_iteration.values() if isinstance(per_iteration, dict) else ())]:
        for sec in (section(top, "sample"), section(top, "eval")):
            if sec and "dtype" in sec:
                sec["dtype"] = resolve_dtype(sec["dtype"])
        for sec in (section(top, "train"), section(top, "stage0", "train")):
            if sec and "precision" in sec:
                sec["precision"] = resolve_precision(sec["precision"])


def _override_for(key: str | None, applied: list[tuple[str, str]]) -> str | None:
    """The last command-line override that set ``key`` (or a section above or below it)."""
    if not key:
        return None
    for ov, k in reversed(applied):
        if key == k or key.startswith(k + ".") or k.startswith(key + "."):
            return ov
    return None


def preset_path(name: str) -> Path | None:
    p = Path(__file__).parent / "presets" / f"{name}.yaml"
    return p if p.exists() else None


def list_presets() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "presets").glob("*.yaml"))
