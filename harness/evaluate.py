"""Score one model on X-AlpacaEval: generate, judge against reference outputs, WR / LC / language fidelity.

Per language, into ``<out>/<lang>/`` (AlpacaEval's own formats):

- ``model_outputs.json``: ``[{instruction, output, generator, dataset, id}]`` in id order (cached: a rerun with the
  same settings does not regenerate; generation resumes per chunk from ``generations.jsonl``);
- ``annotations.json``: ``[{instruction, output_1 (reference), generator_1, output_2 (model), generator_2,
  annotator, preference, dataset, index}]``;
- ``metrics.json``: WR, SE, wins/draws/totals and avg length (alpaca-eval's functions), LC with its source, the
  judge and the reference used, the on-target language rate and the detected-language counts.

``<out>/metrics.json`` aggregates the languages (their average, as the paper's Table 2). Judged pairs go to the
annotation cache shared by the run, so an interrupted evaluation resumes and a rerun makes no judge call.
"""

from __future__ import annotations

import math
from pathlib import Path

from harness.backends import derive_seed, load_backend
from harness.config import RunConfig
from harness.data import eval_subset, load_reference_outputs, load_xalpaca_instructions
from harness.errors import HarnessError
from harness.io import JsonlAppender, atomic_write_json, atomic_write_text, read_json, stable_hash
from harness.models import ModelSpec, resolve_model
from harness.ui import progress

MAX_UNPARSED = 0.5  # share of judge replies that may fail to parse before the evaluation stops


def _generate(be, rows: list[dict], path: Path, cfg: RunConfig, lang: str, bar, task) -> list[str]:
    """Outputs for ``rows`` (X-AlpacaEval rows), resumable per chunk in ``path`` (JSONL)."""
    ec = cfg.eval
    app = JsonlAppender(path)
    todo = app.pending_chunks([r["id"] for r in rows], ec.chunk, lambda x: x["id"])
    bar.update(task, advance=len(rows) - sum(map(len, todo)))
    for positions in todo:
        chunk = [rows[j] for j in positions]
        outs = be.generate([be.format_prompt(r["instruction"]) for r in chunk], n=1, temperature=ec.temperature,
                           top_p=ec.top_p, max_tokens=ec.max_tokens,
                           seeds=[derive_seed(ec.seed, "eval", lang, r["id"]) for r in chunk])
        app.append({"id": r["id"], "output": o[0].text, "n_tokens": o[0].n_tokens, "finished": o[0].finished}
                   for r, o in zip(chunk, outs))
        bar.update(task, advance=len(chunk))
    app.close()
    by_id = {x["id"]: x["output"] for x in app.rows}
    return [by_id[r["id"]] for r in rows]


def generate_outputs(spec: ModelSpec, label: str, out: Path, cfg: RunConfig, langs: list[str],
                     file_name: str = "model_outputs.json") -> dict[str, Path]:
    """model_outputs.json per language for ``spec``; cached by a hash of the model and the decoding settings."""
    ec = cfg.eval
    ids = eval_subset(ec.limit)
    key = stable_hash({"model": spec.identity(), "decode": [ec.temperature, ec.top_p, ec.max_tokens, ec.seed],
                       "ids": ids, "backend": ec.backend or cfg.backend.sample})
    paths, todo = {}, []
    for lang in langs:
        p = out / lang / file_name
        paths[lang] = p
        meta = out / lang / (file_name + ".hash")
        if not (p.exists() and meta.exists() and meta.read_text().strip() == key):
            todo.append(lang)
    if not todo:
        return paths
    wanted = set(ids)
    data = {lang: [r for r in load_xalpaca_instructions(lang, cfg.data_dir) if r["id"] in wanted] for lang in todo}
    with load_backend(ec.backend or cfg.backend.sample, spec, threads=cfg.backend.threads,
                      **cfg.backend.options) as be, progress() as bar:
        for lang in todo:
            task = bar.add_task(f"eval {label} {lang}: generate", total=len(data[lang]))
            gen_path = out / lang / (file_name.replace(".json", "") + ".generations.jsonl")
            outputs = _generate(be, data[lang], gen_path, cfg, lang, bar, task)
            atomic_write_json(paths[lang], [{"instruction": r["instruction"], "output": o, "generator": label,
                                             "dataset": r["dataset"], "id": r["id"]}
                                            for r, o in zip(data[lang], outputs)])
            atomic_write_text(out / lang / (file_name + ".hash"), key + "\n")
    return paths


def _reference(lang: str, cfg: RunConfig, out: Path) -> tuple[dict, str, str]:
    ec = cfg.eval
    source = ec.references.get(lang, ec.reference)
    is_file = str(source).endswith((".json", ".json.gz")) or Path(str(source)).is_file()
    if is_file or source == ec.reference:
        return load_reference_outputs(lang, str(source), cfg.data_dir)
    spec = resolve_model(str(source), where=f"eval.references.{lang}")  # a model answers as the reference
    path = generate_outputs(spec, spec.name, out, cfg, [lang], "reference_outputs.json")[lang]
    rows = read_json(path)
    return {r["id"]: r["output"] for r in rows}, spec.name, f"{path} (generated by {spec.name})"


def evaluate_model(spec: ModelSpec, label: str, out: Path, cfg: RunConfig, cache_path: Path) -> dict:
    """Generate, judge and score ``spec`` on the configured languages; returns the aggregate metrics."""
    import pandas as pd

    from harness.judges import AnnotationCache, make_judge
    from harness.langid import on_target_rate
    from harness.metrics import lc_inputs, length_controlled_winrate, win_rate

    ec = cfg.eval
    langs = list(ec.languages or cfg.languages)
    refs = {lang: _reference(lang, cfg, out) for lang in langs}  # fail early on a missing reference
    model_paths = generate_outputs(spec, label, out, cfg, langs)
    judge = make_judge(cfg)
    lc = lc_inputs(ec.lc_source)
    cache = AnnotationCache(cache_path)
    per_lang = {}
    try:
        for lang in langs:
            rows = read_json(model_paths[lang])
            ref_out, ref_gen, ref_src = refs[lang]
            missing = [r["id"] for r in rows if r["id"] not in ref_out]
            if missing:
                raise HarnessError(f"reference outputs have no answer for X-AlpacaEval id {missing[0]} "
                                   f"({len(missing)} missing)", ref_src)
            with progress() as bar:
                task = bar.add_task(f"eval {label} {lang}: judge", total=len(rows))
                prefs = judge.judge([r["instruction"] for r in rows], [ref_out[r["id"]] for r in rows],
                                    [r["output"] for r in rows], cache, lambda k: bar.advance(task, k))
            unparsed = sum(1 for p in prefs if p is None or math.isnan(p))
            if rows and unparsed / len(rows) > MAX_UNPARSED:
                raise HarnessError(f"{unparsed} of {len(rows)} judge replies for {label}/{lang} could not be "
                                   f"parsed (judge {judge.name} on {judge.model})", cache_path)
            annotations = [{"instruction": r["instruction"], "output_1": ref_out[r["id"]], "generator_1": ref_gen,
                            "output_2": r["output"], "generator_2": label, "annotator": judge.name,
                            "preference": None if p is None or math.isnan(p) else p, "dataset": r["dataset"],
                            "index": r["id"]} for r, p in zip(rows, prefs)]
            atomic_write_json(out / lang / "annotations.json", annotations)
            frame = pd.DataFrame({"index": [a["index"] for a in annotations],
                                  "preference": [float("nan") if a["preference"] is None else a["preference"]
                                                 for a in annotations],
                                  "len_1": [len(a["output_1"]) for a in annotations],
                                  "len_2": [len(a["output_2"]) for a in annotations],
                                  "generator": label, "generator_1": ref_gen})
            wr = win_rate(frame["preference"])
            lcm = length_controlled_winrate(frame, lc) if frame["preference"].notna().sum() >= 2 else {
                "length_controlled_winrate": None, "lc_standard_error": None, "lc_source": lc.source}
            fidelity = on_target_rate([r["output"] for r in rows], lang)
            metrics = {"language": lang, "model": label, **wr,
                       "length_controlled_winrate": lcm["length_controlled_winrate"],
                       "lc_standard_error": lcm["lc_standard_error"], "lc_source": lcm["lc_source"],
                       "lc_origin": lc.origin, "judge": judge.identity(), "reference": ref_gen,
                       "reference_source": ref_src, "n": len(rows), "unparsed": unparsed,
                       "avg_length": float(frame["len_2"].mean()) if len(frame) else 0.0,
                       "on_target_rate": fidelity["rate"], "detected_languages": fidelity["counts"]}
            atomic_write_json(out / lang / "metrics.json", metrics)
            per_lang[lang] = metrics
    finally:
        cache.close()
        judge.close()

    def avg(key):
        vals = [m[key] for m in per_lang.values() if m.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    summary = {"model": label, "languages": langs, "per_language": per_lang,
               "average": {"win_rate": avg("win_rate"), "length_controlled_winrate": avg("length_controlled_winrate"),
                           "on_target_rate": avg("on_target_rate")},
               "judge_calls": cache.calls}
    atomic_write_json(out / "metrics.json", summary)
    return summary
