"""Train: DPO + NLL on the chosen response with TRL (the only TRL importer), full fine-tuning or LoRA; or KTO
(``train.objective: kto``: TRL's KTOTrainer on the pairs as unpaired examples, see :func:`kto_rows`).

Iteration k >= 1 trains pi_{k-1} on this iteration's pairs.jsonl (native prompt in the chat template); iteration 0
(stage 0) trains pi_ref on English preference pairs to build pi_0. The training reference is the starting model
(frozen): its log-probs are precomputed once (``precompute_ref_log_probs``), so no second copy stays in memory.
DPO + NLL is TRL's ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, nll_weight]`` (note: TRL averages the
NLL over all chosen tokens of a batch, LLaMA-Factory per sequence; METHOD.md section 5).

Writes model/ (a full Hugging Face folder; LoRA adapters are merged), train_metrics.json (loss and reward-margin
history, the L2 norm of the parameter change) and, with ``train.save_steps``, resumable trainer checkpoints.
Multi-GPU: ``train.accelerate.num_processes > 1`` (or a config_file) runs this stage under ``accelerate launch``.
On CPU the step runs each pair's prompt once for its chosen and rejected answers (``harness.prefix``) and projects
only the answers' positions onto the vocabulary (:func:`cpu_lm_head`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from harness.config import TrainConfig
from harness.errors import HarnessError
from harness.io import atomic_write_json, read_jsonl
from harness.prefix import shared_prompt_forward
from harness.stages import StageContext

log = logging.getLogger(__name__)


def uses_accelerate(tc: TrainConfig) -> bool:
    acc = tc.accelerate
    return acc.num_processes > 1 or acc.num_machines > 1 or acc.config_file is not None


# srun runs the launch on every node of the allocation; each node's shell fills in its rank and the first node
_FIRST_NODE = "$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n1)"


def launch_command(tc: TrainConfig, run_dir: Path, iteration: int, pick_port: bool = False) -> list[str]:
    """The `accelerate launch` command that runs this stage on several processes (DeepSpeed/FSDP via config); with
    ``num_machines > 1``, an `srun` that runs one on each node of the Slurm allocation.

    ``pick_port``: without a port in extra_args or the config file, rendezvous on a free port of this machine (the
    first node of an allocation) instead of accelerate's fixed 29500, which another run or job may hold (accelerate
    then refuses to start)."""
    import shlex

    from harness.config import accelerate_config_path

    acc = tc.accelerate
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    file_cfg: dict = {}
    if acc.config_file:
        path = accelerate_config_path(str(acc.config_file))
        cmd += ["--config_file", str(path)]
        import yaml

        file_cfg = yaml.safe_load(path.read_text()) or {}
    extra = [str(a) for a in acc.extra_args]
    cmd += ["--num_processes", str(acc.num_processes), *extra]
    flags = {a.split("=")[0] for a in extra}
    srun = acc.num_machines > 1
    one_machine = int(file_cfg.get("num_machines") or 1) == 1 and "--num_machines" not in flags
    if pick_port and (one_machine or srun) and "--main_process_port" not in flags \
            and "main_process_port" not in file_cfg:
        cmd += ["--main_process_port", str(_free_port())]
    tail = ["-m", "harness.stages", str(run_dir), str(iteration), "train"]
    if not srun:
        return cmd + tail
    where = f'--num_machines {acc.num_machines} --machine_rank "$SLURM_NODEID" --main_process_ip "{_FIRST_NODE}"'
    per_node = " ".join([*map(shlex.quote, cmd), where, "--rdzv_backend static", *map(shlex.quote, tail)])
    return ["srun", f"--nodes={acc.num_machines}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            "bash", "-c", per_node]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Where every `train.*` setting arrives: config field -> the trainer attribute it sets (trl.DPOConfig unless
# named otherwise). tests/test_wiring.py builds the real objects from a config in which every field differs from
# its default and checks each arrow; a new TrainConfig field without a row here fails that test.
TRAIN_WIRING = {
    "objective": "the trainer: trl.DPOTrainer + DPOConfig (dpo) or trl.KTOTrainer + KTOConfig (kto; same rows)",
    "method": "peft LoraConfig when 'lora' (none for 'full')",
    "beta": "DPOConfig.beta",
    "nll_weight": "DPOConfig.loss_type / loss_weights ([sigmoid, sft], [1, w])",
    "learning_rate": "DPOConfig.learning_rate",
    "epochs": "DPOConfig.num_train_epochs",
    "batch_size": "DPOConfig.per_device_train_batch_size",
    "grad_accum": "DPOConfig.gradient_accumulation_steps",
    "lr_scheduler": "DPOConfig.lr_scheduler_type",
    "warmup_ratio": "DPOConfig.warmup_steps (a float < 1 is a ratio)",
    "max_length": "DPOConfig.max_length",
    "precision": "DPOConfig.bf16 / use_cpu, and the dtype the model is loaded in",
    "gradient_checkpointing": "DPOConfig.gradient_checkpointing",
    "save_steps": "DPOConfig.save_strategy / save_steps",
    "save_total_limit": "DPOConfig.save_total_limit",
    "lora": "peft LoraConfig r / lora_alpha / lora_dropout / target_modules",
    "accelerate": "the `accelerate launch` command line, under srun on num_machines > 1 (launch_command)",
    "extra": "DPOConfig, passed through as given",
}


def dpo_kwargs(tc: TrainConfig, out: Path, seed: int) -> dict:
    """Keyword arguments for trl.DPOConfig, or trl.KTOConfig with ``objective: kto`` (built without importing TRL,
    so --dry-run can check them). KTO takes the same settings but the loss: TRL's ``kto`` loss, no NLL term, and
    its data in file order (``train_sampling_strategy: sequential``, which its KL estimate needs; the unpaired rows
    are shuffled once with the run seed instead, see :func:`kto_rows`)."""
    kw = dict(
        output_dir=str(out / "trainer"), per_device_train_batch_size=tc.batch_size,
        gradient_accumulation_steps=tc.grad_accum, learning_rate=tc.learning_rate, num_train_epochs=tc.epochs,
        lr_scheduler_type=tc.lr_scheduler,
        warmup_steps=tc.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        beta=tc.beta, max_length=tc.max_length,
        loss_type=["sigmoid", "sft"] if tc.nll_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, tc.nll_weight] if tc.nll_weight > 0 else [1.0],
        precompute_ref_log_probs=True, gradient_checkpointing=tc.gradient_checkpointing,
        bf16=tc.precision in ("bf16", "bf16_cpu"), use_cpu=tc.precision == "bf16_cpu",
        save_strategy="steps" if tc.save_steps else "no", save_steps=tc.save_steps or 500,
        save_total_limit=tc.save_total_limit, save_only_model=False,
        logging_steps=1, report_to=[], seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    if tc.objective == "kto":
        del kw["loss_weights"]
        kw["loss_type"] = "kto"
    kw.update(tc.extra)
    return kw


def config_class(tc: TrainConfig):
    from trl import DPOConfig, KTOConfig

    return KTOConfig if tc.objective == "kto" else DPOConfig


def kto_rows(rows: list[dict], seed: int) -> list[dict]:
    """Pairs as TRL's unpaired KTO examples: (prompt, chosen, label True) and (prompt, rejected, label False),
    shuffled once with the run seed (KTO reads its data in order)."""
    import random

    out = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
           for r in rows for side in ("chosen", "rejected")]
    random.Random(seed).shuffle(out)
    return out


def lora_kwargs(tc: TrainConfig) -> dict | None:
    """Keyword arguments for peft.LoraConfig (None for full fine-tuning)."""
    if tc.method != "lora":
        return None
    return dict(r=tc.lora.r, lora_alpha=tc.lora.alpha, lora_dropout=tc.lora.dropout,
                target_modules=tc.lora.target_modules, task_type="CAUSAL_LM")


def check_dpo_kwargs(kw: dict, cls=None) -> None:
    """Fail in seconds on a key TRL does not know (API churn), without building the config."""
    from trl import DPOConfig

    cls = cls or DPOConfig
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kw) - names)
    if unknown:
        raise HarnessError(f"trl.{cls.__name__} has no field(s) {', '.join(unknown)} (train.extra or an unsupported "
                           "TRL version; harness pins trl 1.16)")


def build_dpo_config(tc: TrainConfig, out: Path, seed: int, where: str = "train"):
    """The real trl.DPOConfig of these settings (what the trainer gets; --dry-run builds it too). A value TRL or
    transformers rejects becomes one line naming the section."""
    cls = config_class(tc)
    kw = dpo_kwargs(tc, out, seed)
    check_dpo_kwargs(kw, cls)
    try:
        return cls(**kw)
    except (ValueError, TypeError) as e:
        raise HarnessError(f"{where}: trl.{cls.__name__} rejects these settings: {str(e).splitlines()[0]}") from None


def _checkpoint_complete(d: Path) -> bool:
    """A trainer checkpoint that a kill did not cut short: transformers writes trainer_state.json last (after the
    weights, optimizer, scheduler and RNG state), and rotation deletes whole folders, so check all of them."""
    import json

    try:
        state = json.loads((d / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = any((d / n).exists() for n in ("model.safetensors", "model.safetensors.index.json",
                                             "adapter_model.safetensors", "pytorch_model.bin"))
    optimizer = (d / "optimizer.pt").exists() or any(d.glob("global_step*"))  # DeepSpeed keeps its own folder
    return weights and optimizer and state.get("global_step") == _step_of(d)


def _step_of(d: Path) -> int:
    try:
        return int(d.name.rpartition("-")[2])
    except ValueError:
        return -1


def resume_checkpoint(trainer_dir: Path) -> Path | None:
    """The newest complete checkpoint-N under ``trainer_dir``; incomplete ones (a kill during a save) are removed
    so that neither the resume nor the trainer's rotation trips over them."""
    found = sorted((d for d in trainer_dir.glob("checkpoint-*") if d.is_dir()), key=_step_of, reverse=True)
    best = None
    for d in found:
        if best is None and _checkpoint_complete(d):
            best = d
        elif best is None:
            log.warning("%s is incomplete (interrupted while saving): removed", d)
            shutil.rmtree(d, ignore_errors=True)
    return best


def _load_rows(ctx: StageContext) -> list[dict]:
    if ctx.iteration == 0:
        from harness.data import load_english_prefs

        pairs, _ = load_english_prefs(ctx.cfg.stage0.dataset, ctx.cfg.stage0.limit)
        return [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    return read_jsonl(ctx.upstream("pairs") / "pairs.jsonl")


def training_tokenizer(spec):
    """(tokenizer, end-of-turn) of the model trained: its eos_token is set to the end-of-turn, since TRL appends
    eos_token to completions that do not end with it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(spec.local_path(), trust_remote_code=spec.trust_remote_code)
    eot = spec.eot or tok.eos_token
    if tok.eos_token != eot:
        tok.eos_token = eot
    return tok, eot


def trainer_rows(rows: list[dict], spec, tok, eot: str) -> list[dict]:
    """Pairs as the trainer reads them: the chat-formatted prompt; chosen and rejected ending with the end-of-turn."""
    from harness.models import format_prompt

    return [{"prompt": format_prompt(spec, tok, r["prompt"]), "chosen": r["chosen"] + eot,
             "rejected": r["rejected"] + eot} for r in rows]


CPU_VOCAB_TILE = 8192


@contextmanager
def cpu_lm_head(enabled: bool = True):
    """TRL 1.16's fused LM head on CPU, made to do only the work it keeps. TRL projects every position (prompt and
    padding too) onto the whole vocabulary and zeroes the unlabelled ones afterwards unless the device runs Triton
    (it keeps tile shapes fixed for compilers); eager CPU has no such constraint, so here the head takes TRL's own
    compact path (only labelled positions: the same log-probs, since the others are zeroed either way), tiles the
    vocabulary by ``CPU_VOCAB_TILE`` instead of 32,768 (smaller temporaries; the same sums up to float rounding), and
    folds the tiles with :class:`harness.lm_head.CpuLogProbs` (in place: about half the time of TRL's torch fallback).
    ``harness bench`` measures the train step; tests/test_stages.py checks the log-probs, loss and gradients agree."""
    if not enabled:
        yield
        return
    import trl.trainer.utils as tu

    from harness.lm_head import chunked_logprobs

    use_triton, tile, function = tu._use_triton, tu._CHUNKED_LOGPROB_CHUNK_SIZE, tu._ChunkedLogProbFunction
    tu._use_triton = lambda device: device.type == "cpu" or use_triton(device)
    tu._CHUNKED_LOGPROB_CHUNK_SIZE = CPU_VOCAB_TILE
    tu._ChunkedLogProbFunction = chunked_logprobs(function)
    try:
        yield
    finally:
        tu._use_triton, tu._CHUNKED_LOGPROB_CHUNK_SIZE, tu._ChunkedLogProbFunction = use_triton, tile, function


def load_train_model(path, dtype, trust_remote_code: bool = False):
    """The model a train stage starts from. On CPU with eager attention: PyTorch's CPU flash-attention kernel (the
    "sdpa" default) takes about 8x its forward time in the backward pass, where eager attention's backward is plain
    matmuls. Measured on the demo's stage-0 pairs (8 pairs per step, bf16 autocast): 2.3-2.9 s per step against
    2.9-3.8 s with sdpa; the first step's loss 3.3895 (eager) and 3.3765 (sdpa) against 3.3854 in float32, so both
    are within bf16's rounding. GPUs keep the model's default attention."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.hardware import keep_freed_memory

    keep_freed_memory()
    kw = {} if torch.cuda.is_available() else {"attn_implementation": "eager"}
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **kw)


def _shared_dataset(dataset, folder: Path):
    """The rows as one on-disk dataset that every process of a multi-process run reads. TRL caches the precomputed
    reference log-probs next to the dataset's files: an in-memory dataset puts them in each process's own temporary
    folder, where the other processes cannot find the main process's file."""
    from accelerate import PartialState
    from datasets import load_from_disk

    with PartialState().main_process_first():  # the main process writes it once, the others then read it
        if not (folder / "dataset_info.json").is_file():
            tmp = folder.with_name(folder.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            dataset.save_to_disk(str(tmp))
            shutil.rmtree(folder, ignore_errors=True)
            tmp.rename(folder)
        return load_from_disk(str(folder))


def build_trainer(model, tok, rows: list[dict], tc: TrainConfig, args, seed: int, peft_config=None, callbacks=()):
    """The TRL trainer of these rows and settings (DPOTrainer, or KTOTrainer on the unpaired rows); the train stage
    and ``harness bench`` build it here, so the benchmark measures the stage's own step."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import DPOTrainer, KTOTrainer

    trainer_cls, data = (KTOTrainer, kto_rows(rows, seed)) if tc.objective == "kto" else (DPOTrainer, rows)
    dataset = Dataset.from_list(data)
    if args.world_size > 1:
        dataset = _shared_dataset(dataset, Path(args.output_dir) / "rows")
    trainer = trainer_cls(model=model, args=args, train_dataset=dataset, processing_class=tok,
                          peft_config=peft_config, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # logs go to train_metrics.json; the rich bar shows progress
    return trainer


def run(ctx: StageContext) -> dict:
    import torch
    from rich.progress import Progress
    from transformers import TrainerCallback

    from harness.backends import threads_per_process
    from harness.timing import phase
    from harness.ui import progress

    tc = ctx.cfg.train_for(ctx.iteration)
    # the CPU training processes of one machine (accelerate launch / torchrun set LOCAL_WORLD_SIZE) share its cores
    sharing = 1 if torch.cuda.is_available() else int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(threads_per_process(ctx.cfg.backend.threads, sharing))
    spec = ctx.policy
    path = spec.local_path()
    tok, eot = training_tokenizer(spec)
    rows = trainer_rows(_load_rows(ctx), spec, tok, eot)
    if not rows:
        raise HarnessError("no training pairs")
    dtype = torch.bfloat16 if tc.precision == "bf16" else torch.float32
    with phase("load"):
        model = load_train_model(path, dtype, spec.trust_remote_code)
    n_params = sum(p.numel() for p in model.parameters())
    before = ({n: p.detach().to("cpu", copy=True).float() for n, p in model.named_parameters()}
              if n_params < 2e9 else None)
    peft_config = None
    if tc.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(**lora_kwargs(tc))
    args = build_dpo_config(tc, ctx.out, ctx.cfg.seed)

    bar_holder: dict = {}

    class RichBar(TrainerCallback):
        def on_train_begin(self, a, state, control, **k):
            bar: Progress = progress()
            bar.start()
            bar_holder["bar"] = bar
            bar_holder["task"] = bar.add_task(f"iter {ctx.iteration} train", total=state.max_steps)

        def on_step_end(self, a, state, control, **k):
            bar_holder["bar"].update(bar_holder["task"], completed=state.global_step)

        def on_train_end(self, a, state, control, **k):
            bar_holder["bar"].stop()

    on_cpu = not torch.cuda.is_available()
    # TRL's constructor tokenizes and precomputes the reference; a pair's prompt runs once on CPU (harness.prefix)
    with cpu_lm_head(on_cpu), shared_prompt_forward(model) as shared_ref, phase("reference"):
        trainer = build_trainer(model, tok, rows, tc, args, ctx.cfg.seed, peft_config, callbacks=[RichBar()])
    resume = resume_checkpoint(ctx.out / "trainer") if tc.save_steps else None
    if resume is not None:
        log.info("iter %d train: resuming from %s", ctx.iteration, resume.name)
    t0 = time.time()
    with cpu_lm_head(on_cpu), shared_prompt_forward(model) as shared_train:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.time() - t0
    shared = shared_ref.shared + shared_train.shared
    if not trainer.is_world_process_zero():
        return {}
    final = trainer.model
    if tc.method == "lora":
        final = final.merge_and_unload()
    with phase("write"):
        final.save_pretrained(ctx.out / "model")
        tok.save_pretrained(ctx.out / "model")
    change = None
    if before is not None:
        sq = 0.0
        for n, p in final.named_parameters():
            key = n if n in before else n.replace("base_model.model.", "")
            if key in before:
                sq += float((p.detach().float().cpu() - before[key]).pow(2).sum())
        change = sq ** 0.5
    hist = [h for h in trainer.state.log_history if "loss" in h]
    if change == 0.0:  # e.g. one optimizer step inside the warm-up: its learning rate is 0
        log.warning("iter %d train: the weights did not change (%d optimizer step(s), warmup_ratio %s, learning rates "
                    "%s): too few pairs for this batch size and warm-up", ctx.iteration, trainer.state.global_step,
                    tc.warmup_ratio, [h.get("learning_rate") for h in hist])
    metrics = {
        "pairs": len(rows), "steps": trainer.state.global_step, "train_seconds": seconds,
        "processes": trainer.args.world_size,
        "objective": tc.objective, "method": tc.method, "precision": tc.precision, "parameters": n_params,
        "param_change_l2": change,
        "shared_prompt_passes": shared,  # forward passes (reference and training) that ran each pair's prompt once
        "loss_first": hist[0]["loss"] if hist else None, "loss_last": hist[-1]["loss"] if hist else None,
        "reward_margin_first": hist[0].get("rewards/margins") if hist else None,
        "reward_margin_last": hist[-1].get("rewards/margins") if hist else None,
        "log_history": trainer.state.log_history,
    }
    atomic_write_json(ctx.out / "train_metrics.json", metrics)
    shutil.rmtree(ctx.out / "trainer", ignore_errors=True)
    return {k: metrics[k] for k in ("pairs", "steps", "param_change_l2", "loss_first", "loss_last",
                                    "reward_margin_first", "reward_margin_last")}
