"""Every setting reaches what it configures: the real trainer / backend objects are built from our config and
checked, value by value (a setting that silently does nothing is the worst bug; issue 10).

- train.*: the real trl.DPOConfig, peft.LoraConfig and the `accelerate launch` command, from a config in which every
  field differs from its default; a TrainConfig field without a row in ``TRAIN_WIRING`` (or in ``TRAIN_VALUES``
  here) fails the test.
- sampling, reward and pair settings, top level and ``per_iteration``: the sample / reward / pairs stages run with
  the real SmolLM2 behind a recording backend (the real transformers backend, subclassed to record its calls), and
  each value is checked where it lands: the backend's generate arguments and ``model.generate`` kwargs, the seeds,
  the scoring dtype, the log-prob sums and rewards, and the pairs' length unit, alpha grid, cap and dropped pairs.
- eval decoding: the same for the X-AlpacaEval generation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.config import TrainConfig, load_config, to_dict
from harness.stages.train import TRAIN_WIRING, build_dpo_config, launch_command, lora_kwargs

# every train.* field, a non-default value, and how to read it back from (DPOConfig, LoraConfig kwargs, launch cmd)
TRAIN_VALUES = {
    "method": ("lora", lambda d, lo, cmd: lo is not None),
    "beta": (0.37, lambda d, lo, cmd: d.beta),
    "nll_weight": (0.25, lambda d, lo, cmd: (d.loss_type, d.loss_weights) == (["sigmoid", "sft"], [1.0, 0.25])
                   and 0.25),
    "learning_rate": (3.0e-6, lambda d, lo, cmd: d.learning_rate),
    "epochs": (2.0, lambda d, lo, cmd: d.num_train_epochs),
    "batch_size": (3, lambda d, lo, cmd: d.per_device_train_batch_size),
    "grad_accum": (5, lambda d, lo, cmd: d.gradient_accumulation_steps),
    "lr_scheduler": ("linear", lambda d, lo, cmd: d.lr_scheduler_type.value),
    "warmup_ratio": (0.05, lambda d, lo, cmd: d.warmup_steps),
    "max_length": (321, lambda d, lo, cmd: d.max_length),
    "precision": ("bf16_cpu", lambda d, lo, cmd: "bf16_cpu" if (d.bf16 and d.use_cpu) else None),
    "gradient_checkpointing": (True, lambda d, lo, cmd: d.gradient_checkpointing),
    "save_steps": (7, lambda d, lo, cmd: d.save_strategy.value == "steps" and d.save_steps),
    "save_total_limit": (3, lambda d, lo, cmd: d.save_total_limit),
    "lora": ({"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj"]},
             lambda d, lo, cmd: {"r": lo.r, "alpha": lo.lora_alpha, "dropout": lo.lora_dropout,
                                 "target_modules": sorted(lo.target_modules)}),
    "accelerate": ({"config_file": "zero3", "num_processes": 4, "num_machines": 2,
                    "extra_args": ["--main_process_port", "29511"]}, lambda d, lo, cmd: _launch(cmd)),
    "extra": ({"label_smoothing": 0.05}, lambda d, lo, cmd: {"label_smoothing": d.label_smoothing}),
}


def _launch(cmd: list[str]) -> dict:
    """train.accelerate as read back from the command: `srun ... bash -c 'accelerate launch ...'` on 2 nodes, each
    node's rank and the first node's address filled in by its shell."""
    import shlex

    assert cmd[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"] and cmd[4:6] == ["bash", "-c"]
    node = shlex.split(cmd[6])
    i = node.index("--num_processes")
    assert node[node.index("--machine_rank") + 1] == "$SLURM_NODEID"
    assert node[node.index("--main_process_ip") + 1].startswith("$(scontrol show hostnames")
    return {"config_file": _shipped(node[node.index("--config_file") + 1]), "num_processes": int(node[i + 1]),
            "num_machines": int(node[node.index("--num_machines") + 1]), "extra_args": node[i + 2:i + 4]}


def _shipped(path: str) -> str:
    """The name of a shipped accelerate config file (harness/presets/accelerate/NAME.yaml), else the path."""
    from harness.config import ACCELERATE_CONFIGS

    p = Path(path)
    return p.stem if p.parent == ACCELERATE_CONFIGS and p.is_file() else path


def test_every_train_field_has_a_wiring_row():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(TRAIN_WIRING) == fields, f"rows missing in TRAIN_WIRING: {fields - set(TRAIN_WIRING)}"
    covered = set(TRAIN_VALUES) | {"objective"}  # objective: test_kto_settings_reach_the_kto_trainer
    assert covered == fields, f"rows missing in TRAIN_VALUES: {fields - covered}"


def test_kto_settings_reach_the_kto_trainer(tmp_path):
    """train.objective: kto builds trl.KTOConfig, and every shared setting arrives there as it does for DPO."""
    from trl import KTOConfig

    shared = {k: v for k, v in TRAIN_VALUES.items() if k not in ("nll_weight", "extra")}
    cfg, _ = load_config(None, ["train.objective=kto", "train.nll_weight=0", 'train.extra={"desirable_weight": 1.5}',
                                *[f"train.{k}={json.dumps(v)}" for k, (v, _) in shared.items()]])
    kto, lora, cmd = _build(cfg.train_for(1), tmp_path)
    assert isinstance(kto, KTOConfig) and kto.loss_type == "kto" and kto.desirable_weight == 1.5
    for k, (v, read) in shared.items():
        got = read(kto, lora, cmd)
        want = True if k == "method" else ({**v, "target_modules": sorted(v["target_modules"])} if k == "lora" else v)
        assert got == want, f"train.{k}={v!r} arrived in KTOConfig as {got!r}"


@pytest.mark.parametrize("overrides, message", [
    (["train.objective=kto"], "train.nll_weight 1.0 has no counterpart in TRL's KTOTrainer"),
    (["train.objective=kto", "train.nll_weight=0", "train.batch_size=1"], "train.batch_size must be >= 2"),
    (["train.objective=ipo"], "train.objective must be one of"),
])
def test_kto_settings_are_checked(overrides, message):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=message):
        load_config(None, overrides)


def _build(tc: TrainConfig, tmp_path: Path):
    from peft import LoraConfig

    kw = lora_kwargs(tc)
    return (build_dpo_config(tc, tmp_path, 0), LoraConfig(**kw) if kw else None,
            launch_command(tc, tmp_path, 1))


def _train_overrides(prefix: str) -> list[str]:
    return [f"{prefix}{k}={json.dumps(v)}" for k, (v, _) in TRAIN_VALUES.items()]


@pytest.mark.parametrize("where", ["train", "per_iteration", "stage0"])
def test_every_train_setting_reaches_the_trainer(where, tmp_path):
    """Top level, a per_iteration override and a stage-0 override: each value arrives in the real objects."""
    defaults = to_dict(TrainConfig())
    for k, (v, _) in TRAIN_VALUES.items():
        assert v != defaults[k], f"train.{k}: the test value equals the default, so it proves nothing"
    if where == "train":
        cfg, _ = load_config(None, _train_overrides("train."))
        tc = cfg.train_for(1)
    elif where == "per_iteration":
        cfg, _ = load_config(None, ["iterations=2", "per_iteration=" + json.dumps(
            {2: {"train": {k: v for k, (v, _) in TRAIN_VALUES.items()}}})])
        tc = cfg.train_for(2)
        assert cfg.train_for(1) == TrainConfig()  # only iteration 2 changes
    else:
        cfg, _ = load_config(None, ["stage0.train=" + json.dumps({k: v for k, (v, _) in TRAIN_VALUES.items()})])
        tc = cfg.train_for(0)
        assert cfg.train_for(1) == TrainConfig()
    dpo, lora, cmd = _build(tc, tmp_path)
    for k, (v, read) in TRAIN_VALUES.items():
        got = read(dpo, lora, cmd)
        want = True if k == "method" else ({**v, "target_modules": sorted(v["target_modules"])} if k == "lora" else v)
        assert got == want, f"train.{k}={v!r} arrived as {got!r}"


def test_defaults_reach_the_trainer_too(tmp_path):
    """The paper's beta 0.1 and max_length 4096 are our defaults: they must arrive, not TRL's own defaults."""
    cfg, _ = load_config(None, ["train.max_length=4096", "train.beta=0.1"])
    dpo, lora, _ = _build(cfg.train_for(1), tmp_path)
    assert (dpo.beta, dpo.max_length, dpo.learning_rate, lora) == (0.1, 4096, 5e-7, None)


def test_lr_schedulers_are_transformers_own():
    from transformers.trainer_utils import SchedulerType

    from harness.config import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType}


@pytest.mark.vllm
def test_vllm_sampling_params_carry_every_decoding_setting():
    from harness.backends import VLLMBackend

    fake_self = SimpleNamespace(stop=["<|im_end|>"])
    params = VLLMBackend.sampling_params(fake_self, n=3, temperature=0.55, top_p=0.85, max_tokens=17,
                                         seeds=[11, 12], repetition_penalty=1.1)
    assert [(p.n, p.temperature, p.top_p, p.max_tokens, p.seed, p.repetition_penalty, p.stop) for p in params] == [
        (3, 0.55, 0.85, 17, 11, 1.1, ["<|im_end|>"]), (3, 0.55, 0.85, 17, 12, 1.1, ["<|im_end|>"])]


def test_vllm_threads_bind_to_the_cores_this_process_may_use(monkeypatch):
    """vLLM pins one OpenMP thread to each core in VLLM_CPU_OMP_THREADS_BIND: those are the cores this process may
    run on (taskset, a Slurm allocation), not 0..n-1, and replicas take disjoint shares of them in turn."""
    import os
    import subprocess
    import sys

    from harness import backends

    last = max(os.sched_getaffinity(0))
    code = ("import os, sys; os.sched_setaffinity(0, {int(sys.argv[1])})\n"
            "from harness.backends import available_cores, configure_vllm_env\n"
            "configure_vllm_env(available_cores()); print(os.environ['VLLM_CPU_OMP_THREADS_BIND'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    r = subprocess.run([sys.executable, "-c", code, str(last)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.split() == [str(last)], r.stderr[-2000:]
    monkeypatch.setattr(backends, "usable_cores", lambda: [4, 5, 6, 7])  # e.g. under taskset -c 4-7
    assert [backends.bind_list(2, first=i * 2) for i in range(2)] == ["4,5", "6,7"]  # replicas 0 and 1
    assert backends.bind_list(3, first=2) == "6,7,4" and backends.bind_list(0) == "4"


@pytest.mark.vllm
def test_vllm_reads_our_thread_binding_as_those_cores():
    from vllm.utils.cpu_resource_utils import parse_id_list

    from harness.backends import bind_list, usable_cores

    assert parse_id_list(bind_list(len(usable_cores()))) == usable_cores()


# -- sampling, reward, pairs through the real stages -------------------------------------------------------------
CALLS: list[tuple] = []


def _spy_backend():
    from harness.backends import TransformersBackend

    class Recording(TransformersBackend):
        """The real transformers backend, recording what it is asked and what it passes to the model."""

        name = "recording"

        def __init__(self, spec, **options):
            CALLS.append(("init", spec.name, dict(options)))
            super().__init__(spec, **options)
            CALLS.append(("loaded", spec.name, str(self.model.dtype).replace("torch.", "")))

        def generate(self, prompts, **kw):
            CALLS.append(("generate", len(prompts), dict(kw)))
            return super().generate(prompts, **kw)

        def generation_kwargs(self, **kw):
            out = super().generation_kwargs(**kw)
            CALLS.append(("model.generate", dict(out)))
            return out

        def score(self, prompts, responses):
            out = super().score(prompts, responses)
            CALLS.append(("score", self.spec.name, list(responses), out))
            return out

    return Recording


def _draw(kwargs: dict):
    """(temperature, top_p) of the draw that model.generate was given (harness.sampling.TokenDraw, its last logits
    processor; generate itself runs greedy and takes the drawn token), or None for greedy decoding."""
    from harness.sampling import TokenDraw

    assert kwargs["do_sample"] is False and kwargs["num_return_sequences"] == 1  # the n samples come as n rows
    procs = kwargs["logits_processor"]
    if procs is None:
        return None
    assert isinstance(procs[-1], TokenDraw)
    return procs[-1].temperature, procs[-1].top_p


@pytest.fixture
def recording_backend():
    from harness.registry import REGISTRY

    REGISTRY.add("backends", "recording", _spy_backend(), "test: records calls", replace=True)
    CALLS.clear()
    yield CALLS
    REGISTRY.remove("backends", "recording")


@pytest.fixture(scope="module")
def perturbed_policy(tmp_path_factory, smollm2):
    """pi_0 != pi_ref, so rewards are not all zero: SmolLM2 with its final norm scaled by 1.1 (a local folder)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("perturbed") / "pi0"
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.1)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(smollm2).save_pretrained(out)
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)  # 540 MB: freed when the module is done, not at session end


TOP = {"sample": {"n": 3, "temperature": 0.7, "top_p": 0.8, "max_tokens": 6, "chunk": 2, "dtype": "bfloat16"},
       "reward": {"logprob_mode": "code_exact", "round_decimals": 2, "beta": 0.5, "dtype": "bfloat16", "chunk": 2},
       "pairs": {"length_unit": "tokens", "drop_degenerate": True, "alpha_step": 0.05, "alpha_max": 0.5,
                 "upper_bound": 1.5, "length_control": True}}
PER_ITER = {"sample": {"n": 2, "temperature": 1.3, "top_p": 0.95, "max_tokens": 5, "dtype": "float32"},
            "reward": {"logprob_mode": "standard", "round_decimals": 3, "beta": 2.0, "dtype": "float32"},
            "pairs": {"length_unit": "chars", "drop_degenerate": False, "alpha_step": 0.1, "upper_bound": -2.0,
                      "length_control": False}}
# reward settings proven by other tests: reference (pi_{t-1}) and translate_max_tokens (R_t) in test_pipeline.py
REWARD_ELSEWHERE = {"reference", "translate_max_tokens"}


def test_stage_wiring_tests_cover_every_setting():
    """A new sample / reward / pairs setting must be added to the wiring test below (or proven elsewhere)."""
    from harness.config import PairsConfig, RewardConfig, SampleConfig

    for cls, section, elsewhere in ((SampleConfig, "sample", set()), (RewardConfig, "reward", REWARD_ELSEWHERE),
                                    (PairsConfig, "pairs", set())):
        assert {f.name for f in dataclasses.fields(cls)} == set(TOP[section]) | elsewhere, section


def _expected(per_iteration: bool) -> dict:
    out = json.loads(json.dumps(TOP))
    if per_iteration:
        for section, values in PER_ITER.items():
            out[section].update(values)
    return out


@pytest.mark.model
@pytest.mark.parametrize("per_iteration", [False, True], ids=["top-level", "per_iteration"])
def test_sample_reward_pairs_settings_arrive(per_iteration, recording_backend, perturbed_policy, tmp_path):
    from harness.backends import derive_seed
    from harness.io import read_json, read_jsonl
    from harness.pairs import select_pairs
    from harness.pipeline import Pipeline

    overrides = ["run_name=wiring", "seed=11", "languages=[en,es]", "iterations=1",
                 f"models.policy={perturbed_policy}", "prompts.limit=2", "backend.sample=recording",
                 "backend.score=recording"]
    overrides += [f"{section}.{k}={json.dumps(v)}" for section, kv in TOP.items() for k, v in kv.items()]
    if per_iteration:
        overrides.append("per_iteration=" + json.dumps({1: PER_ITER}))
    want = _expected(per_iteration)
    cfg, _ = load_config(None, overrides)
    pipe = Pipeline(cfg, tmp_path / "runs")
    for t in pipe.plan():
        if t.iteration == 1 and t.stage in ("sample", "reward", "pairs"):
            pipe.execute(t)
    root = pipe.layout.root / "iter_1"
    s, r, p = want["sample"], want["reward"], want["pairs"]

    # sampling: the stage's call, the model.generate kwargs, and the per-prompt seeds
    gens = [c[2] for c in CALLS if c[0] == "generate"]
    assert gens and all((g["n"], g["temperature"], g["top_p"], g["max_tokens"]) ==
                        (s["n"], s["temperature"], s["top_p"], s["max_tokens"]) for g in gens)
    model_kw = [c[1] for c in CALLS if c[0] == "model.generate"]
    assert model_kw and all((_draw(k), k["max_new_tokens"]) == ((s["temperature"], s["top_p"]), s["max_tokens"])
                            for k in model_kw)
    rows = read_jsonl(root / "sample" / "responses.jsonl")
    expected_seeds = [derive_seed(11, 1, "sample", row["lang"], row["id"]) for row in rows]
    assert [seed for g in gens for seed in g["seeds"]] == expected_seeds
    assert all(len(row["responses"]) == s["n"] for row in rows)
    assert all(x["n_tokens"] <= s["max_tokens"] for row in rows for x in row["responses"])
    # the sampler's precision: what the backend was asked for and the weights it runs in
    assert [c[2]["dtype"] for c in CALLS if c[0] == "init"][0] == s["dtype"]
    assert [c[2] for c in CALLS if c[0] == "loaded"][0] == s["dtype"]

    # reward: the scoring dtype reaches the backend; logprob_mode, rounding and beta reach every reward
    inits = [c[2] for c in CALLS if c[0] == "init"]
    assert inits[-2:] == [{"threads": None, "dtype": r["dtype"]}] * 2
    assert [c[2] for c in CALLS if c[0] == "loaded"][-2:] == [r["dtype"]] * 2  # the weights the scorer runs in
    raw = {}  # (model, response text) -> per-token log-probs the backend returned
    for c in CALLS:
        if c[0] == "score":
            for text, lps in zip(c[2], c[3]):
                raw[(c[1], text)] = lps
    policy_name, ref_name = pipe.model(0).name, pipe.reference.name
    assert policy_name != ref_name
    rewards = read_jsonl(root / "reward" / "rewards.jsonl")
    nonzero = 0
    for row in rewards:
        for x in row["responses"]:
            def total(name):
                lps = raw[(name, x["text"])]
                return round(sum(lps[1:] if r["logprob_mode"] == "code_exact" else lps), r["round_decimals"])
            assert x["policy_logp"] == total(policy_name) and x["ref_logp"] == total(ref_name)
            assert x["reward"] == pytest.approx((total(policy_name) - total(ref_name)) * r["beta"], abs=1e-9)
            assert x["scored_tokens"] == len(raw[(policy_name, x["text"])]) - (r["logprob_mode"] == "code_exact")
            nonzero += x["reward"] != 0
    assert nonzero > 0

    # pairs: length unit, alpha grid, upper bound and dropped degenerate pairs, against an independent selection
    summary = read_json(root / "pairs" / "summary.json")
    trace = (root / "pairs" / "alpha_trace.csv").read_text().splitlines()[1:]
    pairs = read_jsonl(root / "pairs" / "pairs.jsonl")
    for lang in ("en", "es"):
        lrows = [row for row in rewards if row["lang"] == lang]
        R = [[x["reward"] for x in row["responses"]] for row in lrows]
        L = [[len(x["text"]) if p["length_unit"] == "chars" else x["n_tokens"] for x in row["responses"]]
             for row in lrows]
        sel = select_pairs(R, L, length_control=p["length_control"], step=p["alpha_step"],
                           alpha_max=p["alpha_max"], upper_bound=p["upper_bound"])
        info = summary[lang]
        assert (info["length_unit"], info["upper_bound"], info["alpha"]) == (p["length_unit"], p["upper_bound"],
                                                                             sel.alpha)
        alphas = [float(line.split(",")[1]) for line in trace if line.startswith(lang + ",")]
        if p["length_control"]:
            assert len(alphas) == math.ceil(round(p["alpha_max"] / p["alpha_step"], 6))
            assert alphas[1] - alphas[0] == pytest.approx(p["alpha_step"])
        else:
            assert alphas == [] and info["alpha"] == 0.0
        kept = [pp for pp in pairs if pp["lang"] == lang]
        want_pairs = [(row["id"], sel.chosen[i], sel.rejected[i]) for i, row in enumerate(lrows)
                      if not (p["drop_degenerate"] and (sel.chosen[i] == sel.rejected[i] or
                              row["responses"][sel.chosen[i]]["text"] == row["responses"][sel.rejected[i]]["text"]))]
        assert [(pp["id"], pp["chosen_index"], pp["rejected_index"]) for pp in kept] == want_pairs
        assert info["degenerate_dropped"] == (info["degenerate"] if p["drop_degenerate"] else 0)
        assert all(pp[f"chosen_length"] == (len(pp["chosen"]) if p["length_unit"] == "chars" else
                   next(x["n_tokens"] for row in lrows if row["id"] == pp["id"] for x in row["responses"]
                        if x["text"] == pp["chosen"])) for pp in kept)


@pytest.mark.model
def test_eval_decoding_settings_arrive(recording_backend, tmp_path):
    from harness.backends import derive_seed
    from harness.evaluate import generate_outputs
    from harness.io import read_json
    from harness.models import resolve_model

    cfg, _ = load_config(None, ["languages=[en,de]", "eval.enabled=true", "eval.limit=2", "eval.temperature=0.3",
                                "eval.top_p=0.7", "eval.max_tokens=5", "eval.seed=5", "eval.backend=recording",
                                "eval.chunk=1", "eval.dtype=bfloat16"])
    paths = generate_outputs(resolve_model("smollm2-135m-instruct"), "pi_ref", tmp_path, cfg, ["en", "de"])
    assert [c[2] for c in CALLS if c[0] == "loaded"] == ["bfloat16"]  # eval.dtype: the generator's weights
    gens = [c[2] for c in CALLS if c[0] == "generate"]
    assert len(gens) == 4 and all((g["n"], g["temperature"], g["top_p"], g["max_tokens"]) == (1, 0.3, 0.7, 5)
                                  for g in gens)
    model_kw = [c[1] for c in CALLS if c[0] == "model.generate"]
    assert model_kw and all((_draw(k), k["max_new_tokens"]) == ((0.3, 0.7), 5) for k in model_kw)
    ids = [r["id"] for lang in ("en", "de") for r in read_json(paths[lang])]
    langs = ["en"] * 2 + ["de"] * 2
    assert [g["seeds"][0] for g in gens] == [derive_seed(5, "eval", lang, i) for lang, i in zip(langs, ids)]

    # eval.chunk: the languages share the calls, eval.chunk prompts each, in language then id order
    CALLS.clear()
    cfg, _ = load_config(None, ["languages=[en,de]", "eval.enabled=true", "eval.limit=2", "eval.max_tokens=5",
                                "eval.seed=5", "eval.backend=recording", "eval.chunk=3"])
    paths = generate_outputs(resolve_model("smollm2-135m-instruct"), "pi_ref", tmp_path / "shared", cfg, ["en", "de"])
    gens = [c[2] for c in CALLS if c[0] == "generate"]
    assert [len(g["seeds"]) for g in gens] == [3, 1]
    assert [s for g in gens for s in g["seeds"]] == [derive_seed(5, "eval", lang, i) for lang, i in zip(langs, ids)]
    assert [r["id"] for lang in ("en", "de") for r in read_json(paths[lang])] == ids


# -- what each stage's hash covers ---------------------------------------------------------------------------------
@pytest.mark.parametrize("section,key,value,first", [
    ("prompts", "limit", 3, "sample"), ("sample", "temperature", 0.5, "sample"), ("sample", "max_tokens", 9, "sample"),
    ("sample", "dtype", "bfloat16", "sample"),
    ("backend", "options", {"max_model_len": 512}, "sample"), ("reward", "beta", 0.5, "reward"),
    ("reward", "logprob_mode", "code_exact", "reward"), ("reward", "dtype", "bfloat16", "reward"),
    ("pairs", "alpha_step", 0.01, "pairs"), ("pairs", "length_unit", "tokens", "pairs"),
    ("pairs", "drop_degenerate", True, "pairs"), ("train", "beta", 0.2, "train"),
    ("train", "max_length", 128, "train"),
])
@pytest.mark.parametrize("how", ["top-level", "per_iteration"])
def test_each_stage_hash_covers_what_it_uses(section, key, value, first, how):
    """Changing a setting (at the top level, or for iteration 2 only) reruns its stage and what follows, nothing
    before it and no other iteration's stages (a per-iteration prompts change once reused stale samples)."""
    from harness.pipeline import Pipeline

    base = ["iterations=2", "prompts.limit=2", "languages=[en,es]"]
    change = (f"{section}.{key}={json.dumps(value)}" if how == "top-level" else
              "per_iteration=" + json.dumps({2: {section: {key: value}}}))
    hashes = []
    for overrides in (base, base + [change]):
        cfg, _ = load_config(None, overrides)
        hashes.append({(t.iteration, t.stage): t.hash for t in Pipeline(cfg, Path("/nonexistent")).plan()})
    a, b = hashes
    order = ["sample", "reward", "pairs", "train"]
    changed_from = 1 if how == "top-level" else 2
    retrains_pi0 = section == "train" and how == "top-level"  # stage 0 uses `train` too: everything follows
    for (k, stage), h in a.items():
        if k == 0:
            assert (b[(k, stage)] != h) == retrains_pi0, "stage 0"
            continue
        after = retrains_pi0 or k > changed_from or (k == changed_from and order.index(stage) >= order.index(first))
        assert (b[(k, stage)] != h) == after, f"iter_{k}/{stage}: changed={b[(k, stage)] != h}, expected {after}"


def test_generation_dtypes_change_their_stages_only_when_set():
    """sample.dtype and eval.dtype: set, they rerun sampling (and what follows) and the evaluations; unset (the
    model's own dtype), the hashes are those of a config without the setting, so runs made before it existed are
    not redone."""
    from harness.pipeline import Pipeline

    def plan(*extra):
        cfg, _ = load_config(None, ["iterations=1", "prompts.limit=2", "languages=[en,es]", "eval.enabled=true",
                                    "eval.limit=2", *extra])
        tasks = Pipeline(cfg, Path("/nonexistent")).plan()
        return {(t.iteration, t.stage): t.hash for t in tasks}, {(t.iteration, t.stage): t for t in tasks}

    base, tasks = plan()
    assert "dtype" not in tasks[(1, "sample")].settings["sample"]
    assert "dtype" not in tasks[(1, "eval")].settings["eval"]
    sampled, _ = plan("sample.dtype=bfloat16")
    assert {k for k in base if base[k] != sampled[k]} == {(1, "sample"), (1, "reward"), (1, "pairs"), (1, "train"),
                                                          (1, "eval")}
    evaluated, _ = plan("eval.dtype=bfloat16")
    assert {k[1] for k in base if base[k] != evaluated[k]} == {"eval"}


# -- the strategies' own decoding settings -------------------------------------------------------------------------
def _strategy_stages(strategy: str, stages: tuple[str, ...], policy, tmp_path, *extra: str) -> Pipeline:
    from harness.pipeline import Pipeline

    cfg, _ = load_config(None, ["run_name=wiring", "seed=13", "languages=[en,es]", "iterations=1",
                                f"strategy={strategy}", f"models.policy={policy}", "prompts.limit=2",
                                "backend.sample=recording", "backend.score=recording", "sample.max_tokens=7",
                                "reward.translate_max_tokens=9", "reward.chunk=8", *extra])
    pipe = Pipeline(cfg, tmp_path / "runs")
    for t in pipe.plan():
        if t.iteration == 1 and t.stage in stages:
            pipe.execute(t)
    return pipe


@pytest.mark.model
def test_lidr_decoding_arrives(recording_backend, perturbed_policy, tmp_path):
    """LIDR's fixed decoding (greedy, repetition penalty 1.1, sample.max_tokens) reaches model.generate, and its
    self-translations run greedy with reward.translate_max_tokens under the scoring dtype."""
    from harness.strategies.lidr import REPETITION_PENALTY

    _strategy_stages("lidr", ("sample", "translate"), perturbed_policy, tmp_path, "reward.dtype=bfloat16",
                     "sample.temperature=0.9", "sample.n=4")
    gens = [c[2] for c in CALLS if c[0] == "generate"]
    model_kw = [c[1] for c in CALLS if c[0] == "model.generate"]
    assert len(gens) == 2 and len(model_kw) == 2  # one sample call (en+es prompts), one translate call
    sample, trans = gens
    assert (sample["n"], sample["temperature"], sample["max_tokens"], sample["repetition_penalty"]) == \
        (1, 0.0, 7, REPETITION_PENALTY)  # not sample.n / sample.temperature: LIDR answers greedily, once
    assert (trans["n"], trans["temperature"], trans["max_tokens"]) == (1, 0.0, 9)
    assert [(_draw(k), k["max_new_tokens"], k["repetition_penalty"])
            for k in model_kw] == [(None, 7, REPETITION_PENALTY), (None, 9, 1.0)]
    assert [c[2] for c in CALLS if c[0] == "loaded"] == ["float32", "bfloat16"]  # sampling, then translating


@pytest.mark.model
def test_self_rewarding_judge_settings_arrive(recording_backend, perturbed_policy, tmp_path):
    """strategy_options.judge_samples / judge_max_tokens / judge_temperature / judge_top_p reach the judge's
    model.generate, with per-response seeds; the judge is the policy unless strategy_options.judge says otherwise,
    and runs on strategy_options.judge_backend (here the recording one; the sampling stays on transformers)."""
    from harness.backends import derive_seed
    from harness.io import read_jsonl

    opts = {"judge_samples": 2, "judge_max_tokens": 5, "judge_temperature": 0.4, "judge_top_p": 0.6,
            "judge_backend": "recording"}
    pipe = _strategy_stages("self_rewarding", ("sample", "judge"), perturbed_policy, tmp_path, "sample.n=2",
                            "backend.sample=transformers", "strategy_options=" + json.dumps(opts))
    judge_calls = [c for c in CALLS if c[0] == "generate"]  # only the judge ran on the recording backend
    assert len(judge_calls) == 1
    g = judge_calls[0][2]
    assert (g["n"], g["temperature"], g["top_p"], g["max_tokens"]) == (2, 0.4, 0.6, 5)
    k = [c[1] for c in CALLS if c[0] == "model.generate"][-1]
    assert (_draw(k), k["max_new_tokens"]) == ((0.4, 0.6), 5)
    inits = [c[1] for c in CALLS if c[0] == "init"]
    assert inits == [pipe.model(0).name]  # the judge, on judge_backend: the policy pi_0
    rows = read_jsonl(pipe.layout.root / "iter_1" / "sample" / "responses.jsonl")
    assert g["seeds"] == [derive_seed(13, 1, "judge", r["lang"], r["id"], i) for r in rows
                          for i in range(len(r["responses"]))]
    judged = read_jsonl(pipe.layout.root / "iter_1" / "judge" / "judgements.jsonl")
    assert all(len(texts) == 2 for r in judged for texts in r["judgements"])
