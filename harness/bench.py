"""``harness bench``: sampling, scoring and training throughput on the demo model, in one process.

Scoring is compared with a plain reference implementation on the same inputs (the authors' approach: batches of
3 in file order, right padding, full vocabulary log_softmax, then gather), and the backends' summed log-probs are
compared with each other. Figures are ratios against that reference measured in the same run, so they survive a
busy machine better than absolute numbers; still, run it on an idle machine.
"""

from __future__ import annotations

import time

from harness.ui import console

FALLBACK_PROMPTS = [
    "Explain why the sky is blue.", "Write a short poem about rain.", "What is 17 times 23?",
    "Give three tips for learning a language.", "¿Qué es la fotosíntesis?", "Erkläre, wie ein Kühlschrank funktioniert.",
    "Describe the water cycle in detail.", "Name five capital cities in Africa.",
]


def _prompts(n: int) -> list[str]:
    try:
        from harness.data import load_prompts

        ps = load_prompts("ultrafeedback-parallel/demo-subset", ["en", "es", "de"])
        texts = [p.prompt for lang in ("en", "es", "de") for p in ps.by_lang[lang]]
    except Exception:
        texts = FALLBACK_PROMPTS
    return [texts[i % len(texts)] for i in range(n)]


def reference_score(be, prompts: list[str], responses: list[str], batch: int = 3) -> list[float]:
    """The authors' scorer: right padding, batch 3, file order, full log_softmax over the vocabulary, gather."""
    import torch

    out = []
    seqs = [be.score_ids(p, r) for p, r in zip(prompts, responses)]
    for s in range(0, len(seqs), batch):
        chunk = seqs[s:s + batch]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attn = torch.zeros_like(ids)
        for b, (x, _) in enumerate(chunk):
            ids[b, :len(x)] = torch.tensor(x)
            attn[b, :len(x)] = 1
        with torch.no_grad():
            logp = torch.log_softmax(be.model(input_ids=ids, attention_mask=attn).logits.float(), dim=-1)
            tok = torch.gather(logp[:, :-1], 2, ids[:, 1:, None])[..., 0]
        for b, (x, plen) in enumerate(chunk):
            out.append(float(tok[b, plen - 1:len(x) - 1].sum()))
    return out


def float64_sums(be, prompts: list[str], responses: list[str]) -> list[float]:
    """Summed response log-probs from a float64 copy of the backend's model, one sequence at a time: the yardstick
    for the fp32 scorers' rounding."""
    import copy

    import torch

    model = copy.deepcopy(be.model).double()
    out = []
    for p, r in zip(prompts, responses):
        ids, plen = be.score_ids(p, r)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
        out.append(float(logp[plen - 1:len(ids) - 1].gather(1, torch.tensor(ids[plen:])[:, None]).sum()))
    del model
    return out


def _spread(times: list[float]) -> str:
    """(max - min) / median of the repeats, as a percentage."""
    import statistics

    med = statistics.median(times)
    return f"{100 * (max(times) - min(times)) / med:.0f}%" if len(times) > 1 and med > 0 else "-"


def uneven_responses(prompts: list[str], samples: list[list[str]], long_tokens: int, tok) -> tuple[list, list]:
    """The scoring workload: every sample as it came (short, shared prompts), plus per prompt one long response (its
    samples joined and repeated up to about ``long_tokens`` tokens) so that lengths are uneven as in real runs (the
    paper's responses reach 2,400 tokens)."""
    ps, rs = [], []
    for p, group in zip(prompts, samples):
        for r in group:
            ps.append(p)
            rs.append(r)
        joined = " ".join(x for x in group if x) or "ok"
        text, n = joined, len(tok(joined, add_special_tokens=False)["input_ids"])
        while n < long_tokens:
            text += "\n\n" + joined
            n = len(tok(text, add_special_tokens=False)["input_ids"])
        ps.append(p)
        rs.append(text)
    return ps, rs


def run_bench(backends: list[str], n_prompts: int = 16, max_tokens: int = 64, n: int = 4, repeats: int = 3,
              long_tokens: int = 768, train: bool = True, n_float64: int = 8, train_batch: int = 8) -> dict:
    """One table: per backend, sampling and scoring tokens/s (median of ``repeats``, with the spread), scoring against
    the authors' scorer on the same inputs and as a share of the fp32 matmul peak measured in this process, and
    (``train``) a DPO + NLL step of the train stage against the peak of its precision (bf16 where this machine has
    bf16 kernels, else fp32: harness.hardware). Every scorer's sums are compared with
    a float64 forward on the ``n_float64`` longest sequences."""
    import statistics

    from rich.table import Table

    from harness.backends import load_backend
    from harness.models import resolve_model

    spec = resolve_model("smollm2-135m-instruct")
    questions = _prompts(n_prompts)
    rows: list[tuple] = []  # (what, tokens/s, vs reference, share of peak, spread, detail)
    prompts = responses = None
    sums: dict[str, list[float]] = {}
    n_params = None
    peak32 = matmul_peak("float32")

    def timed(fn, reps):
        out, times = None, []
        for _ in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, times

    ref_tps = None
    for name in backends:
        console.print(f"[bold]{name}[/bold]: loading ...")
        t0 = time.perf_counter()
        be = load_backend(name, spec, dtype="float32")
        load_s = time.perf_counter() - t0
        try:
            if n_params is None and hasattr(be, "model"):
                n_params = sum(p.numel() for p in be.model.parameters())
            fmt = [be.format_prompt(q) for q in questions]
            gens, times = timed(lambda: be.generate(fmt, n=n, temperature=0.9, top_p=1.0, max_tokens=max_tokens,
                                                    seeds=list(range(len(fmt)))), repeats)
            gen_tokens = sum(c.n_tokens for g in gens for c in g)
            med = statistics.median(times)
            rows.append((f"{name} sampling", gen_tokens / med, None, None, _spread(times),
                         f"{len(fmt)} prompts x n={n}, {gen_tokens} new tokens, median {med:.1f} s; "
                         f"engine load {load_s:.1f} s"))
            if prompts is None:  # score the first backend's samples (and long responses) with every backend
                prompts, responses = uneven_responses(fmt, [[c.text for c in g] for g in gens], long_tokens,
                                                      be.tokenizer)
            lengths = [len(be.score_ids(p, r)[0]) for p, r in zip(prompts, responses)]
            n_tok = sum(lengths)
            detail = f"{len(prompts)} sequences of {min(lengths)}-{max(lengths)} tokens, {n_tok} in all"
            out, times = timed(lambda: be.score(prompts, responses), repeats)
            sums[name] = [sum(x) for x in out]
            rows.append((f"{name} scoring", n_tok / statistics.median(times), "x", "x", _spread(times), detail))
            if name == "transformers":
                out, times = timed(lambda: reference_score(be, prompts, responses), repeats)
                sums["reference"] = out
                ref_tps = n_tok / statistics.median(times)
                rows.append(("reference scoring (batch 3, full log_softmax)", ref_tps, "x", "x", _spread(times),
                             "the authors' approach on the same sequences"))
                longest = sorted(range(len(prompts)), key=lambda i: -lengths[i])[:n_float64]
                f64 = dict(zip(longest, float64_sums(be, [prompts[i] for i in longest],
                                                     [responses[i] for i in longest])))
        finally:
            be.close()
    train_row = None
    if train:
        console.print("[bold]train[/bold]: DPO + NLL steps of the train stage ...")
        r = bench_train(steps=repeats, batch_size=train_batch)
        train_row = r
        rows.append((f"train step (DPO + NLL, {_precision_words(r['precision'])}, batch {r['batch_size']})",
                     r["tokens_per_s"], None,
                     f"{100 * r['fraction_of_peak']:.1f}% of {r['peak_dtype']} ({r['peak_gflops']:,.0f} GFLOP/s)",
                     _spread(r["times"]), f"{r['tokens_per_step']:.0f} tokens/step "
                     f"({r['computed_tokens_per_step']:.0f} to compute: each prompt once), median step {r['step_s']:.2f} s"))
    table = Table(title=f"harness bench: SmolLM2-135M-Instruct, fp32 unless said; median of {repeats} repeats")
    for col, justify in (("what", "left"), ("tokens/s", "right"), ("vs reference scoring", "right"),
                         ("share of peak", "right"), ("spread", "right"), ("detail", "left")):
        table.add_column(col, justify=justify)
    for what, tps, vs, share, spread, detail in rows:
        if vs == "x":
            vs = f"{tps / ref_tps:.2f}x" if ref_tps else ""
        if share == "x":
            share = (f"{100 * tps * 2 * n_params / 1e9 / peak32:.0f}% of fp32 ({peak32:,.0f} GFLOP/s)"
                     if n_params else "")
        table.add_row(what, f"{tps:,.0f}", vs or "", share or "", spread, detail)
    console.print(table)
    console.print("share of peak: tokens/s x FLOPs per token (2 x parameters forward; 6 x for a training step) / the "
                  "matmul peak measured in this run; scoring and training count every prompt token, also those a "
                  "shared prompt did not recompute. spread: (max - min) / median over the repeats.")
    agreement = {}
    if "reference" in sums:
        longest_n = max(lengths[i] for i in f64)
        for name in sums:
            diffs = [abs(sums[name][i] - v) for i, v in f64.items()]
            agreement[name] = max(diffs)
            who = "the authors' scorer" if name == "reference" else name
            console.print(f"agreement with float64, {who}: max |diff| {max(diffs):.2e} nats per sequence "
                          f"(the {len(f64)} longest sequences, up to {longest_n} tokens)")
    return {"rows": rows, "sums": sums, "peak_fp32": peak32, "train": train_row, "agreement_float64": agreement}


def save_throughput(result: dict, path: Path) -> Path:
    """The throughputs of a :func:`run_bench` result as the file ``harness run --dry-run --throughput`` reads
    (harness.estimate): the fastest backend's sampling and scoring tokens/s and the train step's, for the demo
    model on this machine."""
    import platform
    from datetime import datetime, timezone

    import yaml

    from harness.backends import available_cores
    from harness.io import atomic_write_text

    best = {}
    for what, tps, *_ in result["rows"]:
        name, _, kind = what.partition(" ")
        if kind in ("sampling", "scoring") and name != "reference" and tps > best.get(kind, (0, ""))[0]:
            best[kind] = (tps, name)
    data = {"model": "smollm2-135m-instruct", "sample": round(best["sampling"][0], 1),
            "score": round(best["scoring"][0], 1), "train": round(result["train"]["tokens_per_s"], 1),
            "measured": f"harness bench, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; sample: "
                        f"{best['sampling'][1]}, score: {best['scoring'][1]}",
            "machine": f"{platform.machine()}, {available_cores()} cores"}
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def bench_compare(n_langs: int = 5, n: int = 805, n_boot: int = 2000, repeats: int = 3) -> dict:
    """``harness compare`` of two models over ``n_langs`` x ``n`` instructions (synthetic judge preferences, real
    WR / LC / bootstrap code): median and spread of the wall time over ``repeats``, against the 30 s budget."""
    import statistics
    import tempfile
    from pathlib import Path

    import numpy as np

    from harness.leaderboard.compare import compare, resolve
    from harness.leaderboard.simulate import simulate, write_run

    langs = ["en", "es", "de", "fr", "ru", "zh", "sw", "th", "bn", "ar", "it", "ja", "ko"][:n_langs]
    rng = np.random.default_rng(0)
    p = rng.beta(1.2, 2.0, n)
    with tempfile.TemporaryDirectory() as tmp:
        run = write_run(Path(tmp), "bench", {
            "pi_0": {lang: simulate(n, p, i) for i, lang in enumerate(langs)},
            "pi_1": {lang: simulate(n, np.clip(p + 0.02, 0, 1), 100 + i) for i, lang in enumerate(langs)}})
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            changes = compare(resolve(f"{run}:pi_0"), resolve(f"{run}:pi_1"), n_boot=n_boot, seed=r)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    console.print(f"compare: 2 models x {n_langs} languages x {n} instructions, {n_boot} resamples (WR and LC): "
                  f"median {med:.2f} s over {repeats} runs (min {min(times):.2f}, max {max(times):.2f}); "
                  f"budget 30 s; {sum(c.verdict != 'within noise' for c in changes)} of {len(changes)} changes "
                  "flagged for a simulated +2-point change")
    return {"median_s": med, "times": times}


def matmul_peak(dtype_name: str, n: int = 2048, seconds: float = 1.5) -> float:
    """GFLOP/s of a square matmul in this process (the machine's practical peak for that dtype), after warm-up; on
    the GPU where there is one (the backends and the train step run there too)."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    sync()
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        iters += 1
        if iters % 50 == 0:  # a GPU queues the matmuls: wait for them now and then, so the clock sees them
            sync()
    sync()
    return 2 * n ** 3 * iters / (time.perf_counter() - t0) / 1e9


def bench_train(steps: int = 3, batch_size: int = 8, precision: str | None = None, max_length: int = 256,
                compact_head: bool = True, shared_prompts: bool = True) -> dict:
    """DPO + NLL optimizer steps of the train stage itself (``harness.stages.train.build_trainer``) on the demo's
    stage-0 pairs: the median step time over ``steps`` after one warm-up step, tokens/s (the pairs' sequences:
    prompt + chosen and prompt + rejected, padding excluded) and the fraction of the matmul peak of its precision
    (default ``auto``: bf16 autocast where this machine has bf16 kernels, else fp32) measured in this process. FLOPs
    = 6 x parameters x those tokens: forward and backward of the policy, counted as scoring counts them (a prompt
    that runs once for both answers still counts twice); the reference log-probs are precomputed, as in a run.
    ``computed_tokens_per_step`` counts each prompt once. ``compact_head`` and ``shared_prompts``
    switch off the stage's CPU LM head and its prompt sharing (harness.prefix), to measure what each gives."""
    import statistics
    import tempfile
    from pathlib import Path

    import torch
    from transformers import TrainerCallback

    from harness.backends import available_cores
    from harness.config import TrainConfig
    from harness.data import load_english_prefs
    from harness.hardware import resolve_precision
    from harness.models import resolve_model
    from harness.prefix import shared_prompt_forward
    from harness.stages.train import (build_dpo_config, build_trainer, cpu_lm_head, load_train_model, trainer_rows,
                                      training_tokenizer)

    torch.set_num_threads(available_cores())
    precision = resolve_precision(precision or "auto")
    spec = resolve_model("smollm2-135m-instruct")
    path = spec.local_path()
    tok, eot = training_tokenizer(spec)
    pairs, _ = load_english_prefs("builtin:english_prefs", None)
    need = batch_size * (steps + 1)
    rows = trainer_rows([{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                         for p in (pairs * (need // len(pairs) + 1))[:need]], spec, tok, eot)
    tc = TrainConfig(batch_size=batch_size, precision=precision, max_length=max_length, learning_rate=1e-5,
                     extra={"max_steps": steps + 1})
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    model = load_train_model(path, torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp, cpu_lm_head(compact_head), shared_prompt_forward(model, shared_prompts):
        t0 = time.perf_counter()  # tokenization and the reference pass happen in the trainer's constructor
        trainer = build_trainer(model, tok, rows, tc, build_dpo_config(tc, Path(tmp), 0), 0, callbacks=[Clock()])
        setup_s = time.perf_counter() - t0
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    step_s = statistics.median(times[1:])
    per_step, computed = [], []
    for s in range(1, steps + 1):
        chunk = rows[s * batch_size:(s + 1) * batch_size]
        n = {k: [len(tok(r[k], add_special_tokens=False)["input_ids"]) for r in chunk]
             for k in ("prompt", "chosen", "rejected")}
        sides = [min(max_length, p + a) for side in ("chosen", "rejected") for p, a in zip(n["prompt"], n[side])]
        per_step.append(sum(sides))
        computed.append(sum(sides) - sum(min(max_length, p) for p in n["prompt"]))
    tokens = statistics.mean(per_step)
    peak_dtype = "bf16" if precision.startswith("bf16") else "fp32"
    peak = matmul_peak({"bf16": "bfloat16", "fp32": "float32"}[peak_dtype])
    achieved = 6 * n_params * tokens / step_s / 1e9  # as scoring: every prompt token, also one computed once
    return {"precision": precision, "peak_dtype": peak_dtype, "step_s": step_s, "min_s": min(times[1:]),
            "max_s": max(times[1:]), "times": times[1:], "tokens_per_step": tokens,
            "computed_tokens_per_step": statistics.mean(computed),
            "tokens_per_s": tokens / step_s, "gflops": achieved, "peak_gflops": peak, "fraction_of_peak": achieved / peak,
            "warmup_s": times[0], "steps": steps, "setup_s": setup_s, "losses": losses,
            "batch_size": trainer.args.per_device_train_batch_size}  # as the built trainer has it


def _precision_words(precision: str) -> str:
    return {"bf16_cpu": "bf16 autocast", "bf16": "bf16", "fp32": "fp32"}.get(precision, precision)


def print_train(steps: int = 3, batch_size: int = 8) -> dict:
    trl_own = bench_train(steps=steps, batch_size=batch_size, compact_head=False, shared_prompts=False)
    head = bench_train(steps=steps, batch_size=batch_size, shared_prompts=False)
    r = bench_train(steps=steps, batch_size=batch_size)
    console.print(f"train, TRL's own CPU LM head: median step {trl_own['step_s']:.2f} s (min {trl_own['min_s']:.2f}, "
                  f"max {trl_own['max_s']:.2f}), setup with reference pass {trl_own['setup_s']:.1f} s, "
                  f"{100 * trl_own['fraction_of_peak']:.1f}% of the {trl_own['peak_dtype']} peak")
    console.print(f"train, compact CPU LM head: {trl_own['step_s'] / head['step_s']:.2f}x faster steps, setup "
                  f"{head['setup_s']:.1f} s; losses {['%.4f' % x for x in head['losses']]} vs TRL's own "
                  f"{['%.4f' % x for x in trl_own['losses']]}")
    console.print(f"train, harness (compact head, each pair's prompt run once): {trl_own['step_s'] / r['step_s']:.2f}x "
                  f"faster steps than TRL's own, {head['step_s'] / r['step_s']:.2f}x the compact head alone, setup "
                  f"{r['setup_s']:.1f} s; losses {['%.4f' % x for x in r['losses']]}")
    console.print(f"train (DPO + NLL, {_precision_words(r['precision'])}, batch {r['batch_size']}, SmolLM2-135M): "
                  f"median step {r['step_s']:.2f} s over "
                  f"{r['steps']} steps (min {r['min_s']:.2f}, max {r['max_s']:.2f}; warm-up step {r['warmup_s']:.2f} s), "
                  f"{r['tokens_per_step']:.0f} tokens/step = {r['tokens_per_s']:,.0f} tokens/s "
                  f"({r['computed_tokens_per_step']:.0f} to compute: each prompt once), "
                  f"{r['gflops']:.0f} GFLOP/s = {100 * r['fraction_of_peak']:.1f}% of the {r['peak_dtype']} matmul "
                  f"peak ({r['peak_gflops']:.0f} GFLOP/s measured now)")
    return r
