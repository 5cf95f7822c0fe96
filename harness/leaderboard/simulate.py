"""Synthetic evaluation folders, written the way :mod:`harness.evaluate` writes them, from simulated preferences:
the fixed inputs of the leaderboard / compare / report tests, the bootstrap's calibration check, and the compare
benchmark (``harness bench --compare``). Only the judge's preferences are simulated; WR and LC come from the real
scoring code (:func:`harness.evaluate.score_annotations_json`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.io import atomic_write_json

JUDGE = {"judge": "local_logprob", "model": "smollm2-135m-instruct", "multilingual": True}
EVAL_CFG = {"temperature": 0.6, "top_p": 0.9, "max_tokens": 64, "seed": 42}


def simulate(n: int, p: np.ndarray | float, seed: int) -> list[float]:
    """Preferences in AlpacaEval's [1, 2] encoding: the model wins instruction i with probability p[i]."""
    rng = np.random.default_rng(seed)
    p = np.broadcast_to(np.asarray(p, float), (n,))
    return list(1.0 + (rng.random(n) < p).astype(float))


def write_eval(out: Path, label: str, prefs: dict[str, list[float]], *, judge: dict = JUDGE,
               reference: str = "gpt-4-turbo-2024-04-09", outputs: dict[str, list[str]] | None = None,
               ids: list[int] | None = None, lc=None, on_target: float = 0.9) -> dict:
    """``out/<lang>/{annotations,metrics}.json`` and ``out/metrics.json`` + ``_done.json`` for one model."""
    from harness.evaluate import score_annotations_json
    from harness.metrics import lc_inputs

    lc = lc or lc_inputs("estimated")
    per_lang = {}
    for lang, pr in prefs.items():
        idx = ids or list(range(len(pr)))
        outs = (outputs or {}).get(lang) or [f"{label} answer {i} " + "x" * (20 + (i * 37) % 300) for i in idx]
        ann = [{"instruction": f"instruction {i} ({lang})", "output_1": f"reference {lang} {i} " + "y" * (150 + i % 90),
                "generator_1": reference, "output_2": o, "generator_2": label, "annotator": judge["judge"],
                "preference": p, "dataset": "helpful_base", "index": i} for i, o, p in zip(idx, outs, pr)]
        m = {"language": lang, "model": label, **score_annotations_json(ann, lc), "judge": judge,
             "reference": reference, "reference_source": "fixture", "n": len(ann), "unparsed": 0,
             "on_target_rate": on_target, "detected_languages": {lang: len(ann)}}
        atomic_write_json(out / lang / "annotations.json", ann)
        atomic_write_json(out / lang / "metrics.json", m)
        per_lang[lang] = m
    atomic_write_json(out / "metrics.json", {"model": label, "languages": list(prefs), "per_language": per_lang})
    atomic_write_json(out / "_done.json", {"stage": "eval"})
    return per_lang


def write_run(root: Path, name: str, models: dict[str, dict[str, list[float]]], *, strategy: str = "cross_lingual",
              eval_cfg: dict | None = None, **kw) -> Path:
    """A run folder with finished evaluations: ``models`` maps pi_ref / pi_0 / pi_k to per-language preferences."""
    import yaml

    run = root / name
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"run_name": name, "strategy": strategy,
                                                     "eval": eval_cfg or EVAL_CFG}), encoding="utf-8")
    (run / "run.json").write_text(json.dumps({"config_hash": "fixture"}), encoding="utf-8")
    for label, prefs in models.items():
        tag = "ref" if label == "pi_ref" else label.split("_")[1]
        write_eval(run / f"iter_{tag}" / "eval", label, prefs, **kw)
    return run
