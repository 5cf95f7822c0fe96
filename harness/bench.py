"""``harness bench``: sampling and scoring throughput per backend on the demo model, in one process.

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


def run_bench(backends: list[str], n_prompts: int = 16, max_tokens: int = 64, n: int = 4) -> dict:
    from rich.table import Table

    from harness.backends import load_backend
    from harness.models import resolve_model

    spec = resolve_model("smollm2-135m-instruct")
    questions = _prompts(n_prompts)
    results: dict = {}
    prompts = responses = None
    sums: dict[str, list[float]] = {}
    for name in backends:
        console.print(f"[bold]{name}[/bold]: loading ...")
        be = load_backend(name, spec, dtype="float32")
        try:
            fmt = [be.format_prompt(q) for q in questions]
            t0 = time.perf_counter()
            gens = be.generate(fmt, n=n, temperature=0.9, top_p=1.0, max_tokens=max_tokens,
                               seeds=list(range(len(fmt))))
            dt = time.perf_counter() - t0
            gen_tokens = sum(c.n_tokens for g in gens for c in g)
            results[f"{name} sampling"] = (gen_tokens / dt, f"{gen_tokens} new tokens in {dt:.1f} s "
                                           f"({len(fmt)} prompts x n={n})")
            if prompts is None:  # score the first backend's samples with every backend
                prompts = [p for p, g in zip(fmt, gens) for _ in g]
                responses = [c.text for g in gens for c in g]
            n_tok = sum(len(be.score_ids(p, r)[0]) for p, r in zip(prompts, responses))
            t0 = time.perf_counter()
            sums[name] = [sum(x) for x in be.score(prompts, responses)]
            dt = time.perf_counter() - t0
            results[f"{name} scoring"] = (n_tok / dt, f"{len(prompts)} sequences, {n_tok} tokens in {dt:.1f} s")
            if name == "transformers":
                t0 = time.perf_counter()
                sums["reference"] = reference_score(be, prompts, responses)
                dt = time.perf_counter() - t0
                results["reference scoring (batch 3, full log_softmax)"] = (n_tok / dt, f"{dt:.1f} s")
        finally:
            be.close()
    table = Table(title="harness bench: SmolLM2-135M-Instruct, fp32")
    table.add_column("what")
    table.add_column("tokens/s", justify="right")
    table.add_column("vs reference scoring", justify="right")
    table.add_column("detail")
    ref = results.get("reference scoring (batch 3, full log_softmax)", (None,))[0]
    for k, (tps, detail) in results.items():
        ratio = f"{tps / ref:.2f}x" if ref and "scoring" in k else ""
        table.add_row(k, f"{tps:,.0f}", ratio, detail)
    console.print(table)
    if "reference" in sums:
        for name in sums:
            if name != "reference":
                diffs = [abs(a - b) for a, b in zip(sums[name], sums["reference"])]
                console.print(f"agreement {name} vs reference: max |diff| {max(diffs):.2e} nats per sequence, "
                              f"mean {sum(diffs) / len(diffs):.2e}")
    return {"throughput": {k: v[0] for k, v in results.items()}, "sums": sums}


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
    """GFLOP/s of a square matmul in this process (the machine's practical peak for that dtype), after warm-up."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        iters += 1
    return 2 * n ** 3 * iters / (time.perf_counter() - t0) / 1e9


def bench_train(steps: int = 3, batch_size: int = 8, precision: str = "bf16_cpu", max_length: int = 256,
                compact_head: bool = True) -> dict:
    """DPO + NLL optimizer steps of the train stage itself (``harness.stages.train.build_trainer``) on the demo's
    stage-0 pairs: the median step time over ``steps`` after one warm-up step, tokens/s (prompt + chosen + rejected,
    padding excluded) and the fraction of the bf16 matmul peak measured in this process (useful FLOPs = 6 x
    parameters x tokens: forward and backward of the policy; the reference log-probs are precomputed, as in a run)."""
    import statistics
    import tempfile
    from pathlib import Path

    import torch
    from transformers import AutoModelForCausalLM, TrainerCallback

    from harness.backends import available_cores
    from harness.config import TrainConfig
    from harness.data import load_english_prefs
    from harness.models import resolve_model
    from harness.stages.train import build_dpo_config, build_trainer, cpu_lm_head, trainer_rows, training_tokenizer

    torch.set_num_threads(available_cores())
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

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp, cpu_lm_head(compact_head):
        t0 = time.perf_counter()  # tokenization and the reference pass happen in the trainer's constructor
        trainer = build_trainer(model, tok, rows, tc, build_dpo_config(tc, Path(tmp), 0), 0, callbacks=[Clock()])
        setup_s = time.perf_counter() - t0
        trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    step_s = statistics.median(times[1:])
    per_step = []
    for s in range(1, steps + 1):
        chunk = rows[s * batch_size:(s + 1) * batch_size]
        per_step.append(sum(min(max_length, len(tok(r["prompt"] + r[side], add_special_tokens=False)["input_ids"]))
                            for r in chunk for side in ("chosen", "rejected")))
    tokens = statistics.mean(per_step)
    peak = matmul_peak("bfloat16" if precision.startswith("bf16") else "float32")
    achieved = 6 * n_params * tokens / step_s / 1e9
    return {"step_s": step_s, "min_s": min(times[1:]), "max_s": max(times[1:]), "tokens_per_step": tokens,
            "tokens_per_s": tokens / step_s, "gflops": achieved, "peak_gflops": peak, "fraction_of_peak": achieved / peak,
            "warmup_s": times[0], "steps": steps, "setup_s": setup_s, "losses": losses}


def print_train(steps: int = 3) -> dict:
    trl_own = bench_train(steps=steps, compact_head=False)
    r = bench_train(steps=steps)
    console.print(f"train, TRL's own CPU LM head: median step {trl_own['step_s']:.2f} s (min {trl_own['min_s']:.2f}, "
                  f"max {trl_own['max_s']:.2f}), setup with reference pass {trl_own['setup_s']:.1f} s, "
                  f"{100 * trl_own['fraction_of_peak']:.1f}% of the bf16 peak")
    console.print(f"train, harness (compact CPU LM head): {trl_own['step_s'] / r['step_s']:.2f}x faster steps, "
                  f"setup {r['setup_s']:.1f} s; losses {['%.4f' % x for x in r['losses']]} vs TRL's own "
                  f"{['%.4f' % x for x in trl_own['losses']]}")
    console.print(f"train (DPO + NLL, bf16 autocast, batch 8, SmolLM2-135M): median step {r['step_s']:.2f} s over "
                  f"{r['steps']} steps (min {r['min_s']:.2f}, max {r['max_s']:.2f}; warm-up step {r['warmup_s']:.2f} s), "
                  f"{r['tokens_per_step']:.0f} tokens/step = {r['tokens_per_s']:,.0f} tokens/s, "
                  f"{r['gflops']:.0f} GFLOP/s = {100 * r['fraction_of_peak']:.1f}% of the bf16 matmul peak "
                  f"({r['peak_gflops']:.0f} GFLOP/s measured now)")
    return r
