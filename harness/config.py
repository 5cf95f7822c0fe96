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
    """CPU threads (None: all cores available to the process)."""
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


@dataclass
class AccelerateConfig:
    config_file: str | None = None
    """accelerate config (DeepSpeed/FSDP) passed to `accelerate launch --config_file`."""
    num_processes: int = 1
    """>1 launches the train stage through `accelerate launch`."""
    extra_args: list = field(default_factory=list)


@dataclass
class TrainConfig:
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
    """fp32, bf16 (GPU) or bf16_cpu (bf16 autocast on CPU)."""
    gradient_checkpointing: bool = False
    save_steps: int | None = None
    """Save resumable trainer checkpoints every N steps (None: an interrupted train stage restarts)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    accelerate: AccelerateConfig = field(default_factory=AccelerateConfig)
    extra: dict = field(default_factory=dict)
    """Passed through to trl.DPOConfig."""


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
    chunk: int = 8
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
        from harness.registry import REGISTRY

        if self.iterations < 0:
            raise HarnessError("iterations must be >= 0", where)
        if not self.languages:
            raise HarnessError("languages is empty", where)
        for lang in self.languages:
            try:
                REGISTRY.get("languages", str(lang))
            except HarnessError as e:
                raise HarnessError(e.message, where) from None
        for kind, name in (("strategies", self.strategy), ("backends", self.backend.sample),
                           ("backends", self.backend.score)):
            try:
                REGISTRY.get(kind, name)
            except HarnessError as e:
                raise HarnessError(e.message, where) from None
        _one_of("reward.reference", self.reward.reference, ("pi_ref", "previous"), where)
        _one_of("reward.logprob_mode", self.reward.logprob_mode, ("standard", "code_exact"), where)
        _one_of("pairs.length_unit", self.pairs.length_unit, ("chars", "tokens"), where)
        _one_of("train.method", self.train.method, ("full", "lora"), where)
        _one_of("train.precision", self.train.precision, ("fp32", "bf16", "bf16_cpu"), where)
        _one_of("eval.lc_source", self.eval.lc_source, ("official", "estimated", "minimal"), where)
        for lang in self.eval.languages or []:
            try:
                REGISTRY.get("languages", str(lang))
            except HarnessError as e:
                raise HarnessError("eval.languages: " + e.message, where) from None
        try:
            REGISTRY.get("judges", self.eval.judge)
        except HarnessError as e:
            raise HarnessError("eval.judge: " + e.message, where) from None
        for name, v in (("sample.n", self.sample.n), ("sample.max_tokens", self.sample.max_tokens),
                        ("sample.chunk", self.sample.chunk), ("reward.chunk", self.reward.chunk),
                        ("train.batch_size", self.train.batch_size)):
            if v < 1:
                raise HarnessError(f"{name} must be >= 1, got {v}", where)
        try:
            self.train_for(0)
        except HarnessError as e:
            raise HarnessError(e.message, where) from None
        if self.sample.n < 2:
            raise HarnessError("sample.n must be >= 2 to build preference pairs", where)
        for k in self.per_iteration:
            if not str(k).isdigit() or not 1 <= int(k) <= max(self.iterations, 1):
                raise HarnessError(f"per_iteration key '{k}' is not an iteration in 1..{self.iterations}", where)
            self.for_iteration(int(k))


def _one_of(name: str, value: str, allowed: tuple, where: str | None) -> None:
    if value not in allowed:
        raise HarnessError(f"{name} must be one of {', '.join(allowed)}; got '{value}'", where)


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
        raise HarnessError(f"'{key}': cannot use {value!r} (expected {tp})", where)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise HarnessError(f"'{key}' must be a mapping, got {value!r}", where)
        return _build(tp, value, where, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise HarnessError(f"'{key}' must be true or false, got {value!r}", where)
    if tp in (int, float):
        if isinstance(value, bool) or value is None:
            raise HarnessError(f"'{key}' must be a number, got {value!r}", where)
        try:
            if tp is int and float(value) != int(float(value)):
                raise ValueError
            return tp(float(value)) if tp is int else float(value)
        except (TypeError, ValueError):
            raise HarnessError(f"'{key}' must be {'an integer' if tp is int else 'a number'}, got {value!r}",
                               where) from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise HarnessError(f"'{key}' must be a string, got {value!r}", where)
        return str(value)
    if tp is list or origin is list:
        if isinstance(value, (str, int)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise HarnessError(f"'{key}' must be a list, got {value!r}", where)
        return [str(v) if key == "languages" else v for v in value]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise HarnessError(f"'{key}' must be a mapping, got {value!r}", where)
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
            raise HarnessError(f"unknown config key '{prefix}{key}'{hint}", where)
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
    """Load YAML (or ``base``), apply overrides; returns the config and the merged plain dict."""
    data: dict = copy.deepcopy(base) if base else {}
    where = None
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.exists():
            raise HarnessError("config file does not exist", p)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise HarnessError(f"malformed YAML: {getattr(e, 'problem', e)}", p,
                               mark.line + 1 if mark else None) from None
        if not isinstance(loaded, dict):
            raise HarnessError("a config must be a YAML mapping", p)
        data = _deep_merge(data, loaded)
    for ov in overrides:
        keys, value = parse_override(ov)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise HarnessError(f"override '{ov}': '{k}' is not a section")
        node[keys[-1]] = value
    cfg = from_dict(data, where)
    cfg.validate(where)
    return cfg, data


def preset_path(name: str) -> Path | None:
    p = Path(__file__).parent / "presets" / f"{name}.yaml"
    return p if p.exists() else None


def list_presets() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "presets").glob("*.yaml"))
