"""Score one model on X-AlpacaEval: generate, judge against reference outputs, WR / LC / language fidelity.

Per language, into ``<out>/<lang>/`` (AlpacaEval's own formats):

- ``model_outputs.json``: ``[{instruction, output, generator, dataset, id}]`` in id order (cached: a rerun with the
  same settings does not regenerate; the languages share the generation calls, which resume per chunk from
  ``<out>/model_outputs.generations.jsonl``);
- ``annotations.json``: ``[{instruction, output_1 (reference), generator_1, output_2 (model), generator_2,
  annotator, preference, dataset, index}]``;
- ``metrics.json``: WR, SE, wins/draws/totals and avg length (alpaca-eval's functions), LC with its source, the
  judge and the reference used, the on-target language rate and the detected-language counts; null where a value is
  undefined (the standard error of one instruction; LC below the rows its GLM needs, with ``lc_note``). It is
  written together with ``annotations.json``, never one without the other.

``<out>/metrics.json`` aggregates the languages (their average, as the paper's Table 2). Judged pairs go to the
annotation cache shared by the run, so an interrupted evaluation resumes and a rerun makes no judge call.
"""

from __future__ import annotations

import math
from pathlib import Path

from harness.backends import derive_seed, load_backend
from harness.config import RunConfig
from harness.data import (DEFAULT_REFERENCE, REFERENCE_LANGUAGES, eval_subset, is_reference_file,
                          load_reference_outputs, load_xalpaca_instructions, reference_outputs_file,
                          xalpaca_instructions_file)
from harness.errors import HarnessError
from harness.io import JsonlAppender, atomic_write_json, atomic_write_text, check_gzip, read_json, stable_hash
from harness.models import ModelSpec, resolve_model
from harness.timing import phase
from harness.ui import progress

MAX_UNPARSED = 0.5  # share of judge replies that may fail to parse before the evaluation stops


def preflight(cfg: RunConfig, strict: bool = True) -> list[str]:
    """Check, when a run is planned (and by --dry-run), what its evaluation will need, so that a missing piece is
    found before hours of sampling and training, not after: loads no model, reads no large file and waits at most a
    few seconds on the network. Nothing to check when ``eval.enabled`` is false. HarnessError for:

    - an API judge whose key variable (``eval.judge_api_key_env``) is unset;
    - ``eval.lc_source: official`` when df_gamed.csv is nowhere: no readable ``eval.df_gamed``, not in the Hugging
      Face cache, and the Hub unreachable (see :func:`harness.metrics.check_df_gamed`);
    - an eval language without X-AlpacaEval instructions or without reference outputs (ar it ja ko have none
      unless ``eval.references`` names some), a reference file that does not exist or is not the gzip its name
      says, a reference model that does not resolve.

    The judge's key and df_gamed.csv belong to the machine, not to the config: with ``strict=False`` (a dry run
    planned on another machine) those two are returned as notes instead of raised.
    """
    from harness.judges import make_judge

    ec = cfg.eval
    notes: list[str] = []
    if not ec.enabled:
        return notes
    from harness.metrics import check_df_gamed

    checks = [make_judge(cfg).preflight]
    if ec.lc_source == "official":
        checks.append(lambda: check_df_gamed(ec.df_gamed))
    for check in checks:
        try:
            check()
        except HarnessError as e:
            if strict:
                raise
            notes.append(e.render())
    for lang in ec.languages or cfg.languages:
        instructions = xalpaca_instructions_file(lang, cfg.data_dir)
        if instructions is not None:
            check_gzip(instructions)
        _check_reference(lang, cfg)
    return notes


def _check_reference(lang: str, cfg: RunConfig) -> None:
    """The reference of ``lang`` as :func:`_reference` will take it, checked without reading it."""
    ec = cfg.eval
    source = str(ec.references.get(lang, ec.reference))
    key = f"eval.references.{lang}" if lang in ec.references else "eval.reference"
    if not is_reference_file(source) and source != ec.reference:
        resolve_model(source, where=key)  # a model answers as the reference
        return
    path = reference_outputs_file(lang, source, cfg.data_dir)
    if path is None:  # no data directory: downloaded from the ICR repository, which has the default's languages
        if source != DEFAULT_REFERENCE or lang not in REFERENCE_LANGUAGES:
            raise HarnessError(f"{key}: no '{source}' reference outputs for language '{lang}' to download (the ICR "
                               f"repository has {DEFAULT_REFERENCE} for {' '.join(REFERENCE_LANGUAGES)}); name "
                               f"another reference for it: eval.references: {{{lang}: MODEL or model_outputs.json}}")
        return
    if not path.is_file():
        raise HarnessError(f"{key}: reference outputs file does not exist", path)
    check_gzip(path)


def _generate(be, items: list[tuple[str, dict]], path: Path, cfg: RunConfig, bar, task) -> dict[tuple, str]:
    """Outputs for ``items`` ((language, X-AlpacaEval row) pairs), {(language, id): output}. The languages share
    the generation calls: a call takes ``eval.chunk`` prompts in order, whatever their language (one call of 18 short
    generations costs little more than one of 6 on a CPU, whose decoding reads the weights once per step for the whole
    batch). Resumable per chunk in ``path`` (JSONL, one row per output with its language)."""
    ec = cfg.eval
    app = JsonlAppender(path)
    key_of = lambda x: (x["lang"], x["id"])  # noqa: E731
    todo = app.pending_chunks([(lang, r["id"]) for lang, r in items], ec.chunk, key_of)
    bar.update(task, advance=len(items) - sum(map(len, todo)))
    for positions in todo:
        chunk = [items[j] for j in positions]
        outs = be.generate([be.format_prompt(r["instruction"]) for _, r in chunk], n=1, temperature=ec.temperature,
                           top_p=ec.top_p, max_tokens=ec.max_tokens,
                           seeds=[derive_seed(ec.seed, "eval", lang, r["id"]) for lang, r in chunk])
        app.append({"lang": lang, "id": r["id"], "output": o[0].text, "n_tokens": o[0].n_tokens,
                    "finished": o[0].finished} for (lang, r), o in zip(chunk, outs))
        bar.update(task, advance=len(chunk))
    app.close()
    return {key_of(x): x["output"] for x in app.rows}


def generate_outputs(spec: ModelSpec, label: str, out: Path, cfg: RunConfig, langs: list[str],
                     file_name: str = "model_outputs.json") -> dict[str, Path]:
    """model_outputs.json per language for ``spec``; cached by a hash of the model and the decoding settings."""
    ec = cfg.eval
    ids = eval_subset(ec.limit)
    key = {"model": spec.identity(), "decode": [ec.temperature, ec.top_p, ec.max_tokens, ec.seed], "ids": ids,
           "backend": ec.backend or cfg.backend.sample}
    if ec.dtype is not None:  # absent: the model's own dtype (outputs cached before the setting existed stay valid)
        key["dtype"] = ec.dtype
    key = stable_hash(key)
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
    items = [(lang, r) for lang in todo for r in data[lang]]
    with phase("generate"), load_backend(ec.backend or cfg.backend.sample, spec, threads=cfg.backend.threads,
                                         dtype=ec.dtype, **cfg.backend.options) as be, progress() as bar:
        task = bar.add_task(f"eval {label} {' '.join(todo)}: generate", total=len(items))
        outputs = _generate(be, items, out / (file_name.replace(".json", "") + ".generations.jsonl"), cfg, bar, task)
    for lang in todo:
        atomic_write_json(paths[lang], [{"instruction": r["instruction"], "output": outputs[(lang, r["id"])],
                                         "generator": label, "dataset": r["dataset"], "id": r["id"]}
                                        for r in data[lang]])
        atomic_write_text(out / lang / (file_name + ".hash"), key + "\n")
    return paths


def given_outputs(label: str, out: Path, cfg: RunConfig, files: dict[str, Path]) -> dict[str, Path]:
    """model_outputs.json per language from outputs produced elsewhere (AlpacaEval's format, one file per
    language), matched to X-AlpacaEval by instruction id: every evaluated id needs an output, and an id that is not
    an X-AlpacaEval id is refused (both name the file). All files are checked before anything is written."""
    from harness.data import read_model_outputs

    ids = eval_subset(cfg.eval.limit)
    rows: dict[str, list[dict]] = {}
    for lang, path in files.items():
        instructions = load_xalpaca_instructions(lang, cfg.data_dir)
        outputs, _ = read_model_outputs(path, instructions)
        extra = sorted(set(outputs) - {r["id"] for r in instructions})
        if extra:
            raise HarnessError(f"id {extra[0]} is not an X-AlpacaEval id (0..{len(instructions) - 1}; "
                               f"{len(extra)} such)", path)
        missing = [i for i in ids if i not in outputs]
        if missing:
            raise HarnessError(f"no output for X-AlpacaEval id {missing[0]} ({len(missing)} of {len(ids)} evaluated "
                               f"ids missing{'' if cfg.eval.limit else '; --limit N evaluates a subset'})", path)
        rows[lang] = [{"instruction": instructions[i]["instruction"], "output": outputs[i], "generator": label,
                       "dataset": instructions[i]["dataset"], "id": i} for i in ids]
    paths = {}
    for lang, r in rows.items():
        paths[lang] = atomic_write_json(out / lang / "model_outputs.json", r)
    return paths


def _reference(lang: str, cfg: RunConfig, out: Path) -> tuple[dict, str, str]:
    ec = cfg.eval
    source = ec.references.get(lang, ec.reference)
    if is_reference_file(str(source)) or source == ec.reference:
        return load_reference_outputs(lang, str(source), cfg.data_dir)
    spec = resolve_model(str(source), where=f"eval.references.{lang}")  # a model answers as the reference
    path = generate_outputs(spec, spec.name, out, cfg, [lang], "reference_outputs.json")[lang]
    rows = read_json(path)
    return {r["id"]: r["output"] for r in rows}, spec.name, f"{path} (generated by {spec.name})"


def score_annotations_json(annotations: list[dict], lc) -> dict:
    """WR and LC (``lc``: :class:`harness.metrics.LCInputs`) of one language's annotations (AlpacaEval's
    annotations.json rows, preference None where unparsed). JSON-safe: what is undefined is None, never NaN (the
    standard errors of a single row; LC where its GLM cannot be fitted, with ``lc_note`` saying why)."""
    import pandas as pd

    from harness.metrics import length_controlled_winrate, win_rate

    frame = pd.DataFrame({"index": [a["index"] for a in annotations],
                          "preference": [float("nan") if a["preference"] is None else a["preference"]
                                         for a in annotations],
                          "len_1": [len(a["output_1"]) for a in annotations],
                          "len_2": [len(a["output_2"]) for a in annotations],
                          "generator": [a["generator_2"] for a in annotations],
                          "generator_1": [a["generator_1"] for a in annotations]})
    lcm = length_controlled_winrate(frame, lc)
    return {**win_rate(frame["preference"]), "length_controlled_winrate": lcm["length_controlled_winrate"],
            "lc_standard_error": lcm["lc_standard_error"], "lc_source": lcm["lc_source"], "lc_note": lcm["lc_note"],
            "lc_origin": lc.origin, "avg_length": float(frame["len_2"].mean()) if len(frame) else 0.0}


def evaluate_model(spec: ModelSpec | None, label: str, out: Path, cfg: RunConfig, cache_path: Path,
                   outputs: dict[str, Path] | None = None) -> dict:
    """Generate, judge and score ``spec`` on the configured languages (or judge and score the given ``outputs``,
    {lang: model_outputs.json}, instead of generating); returns the aggregate metrics."""
    from harness.judges import AnnotationCache, make_judge
    from harness.langid import on_target_rate
    from harness.metrics import lc_inputs

    ec = cfg.eval
    langs = list(outputs) if outputs is not None else list(ec.languages or cfg.languages)
    judge = make_judge(cfg)
    judge.preflight()  # fail early: before any generation
    lc = lc_inputs(ec.lc_source, df_gamed=ec.df_gamed)
    refs = {lang: _reference(lang, cfg, out) for lang in langs}
    for ref_out, _, ref_src in refs.values():  # before generation: every evaluated id needs a reference answer
        missing = [i for i in eval_subset(ec.limit) if i not in ref_out]
        if missing:
            raise HarnessError(f"reference outputs have no answer for X-AlpacaEval id {missing[0]} "
                               f"({len(missing)} missing)", ref_src)
    model_paths = (given_outputs(label, out, cfg, outputs) if outputs is not None
                   else generate_outputs(spec, label, out, cfg, langs))
    cache = AnnotationCache(cache_path)
    per_lang = {}
    try:
        for lang in langs:
            rows = read_json(model_paths[lang])
            ref_out, ref_gen, ref_src = refs[lang]
            with phase("judge"), progress() as bar:
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
            fidelity = on_target_rate([r["output"] for r in rows], lang)
            metrics = {"language": lang, "model": label, **score_annotations_json(annotations, lc),
                       "judge": judge.identity(), "reference": ref_gen, "reference_source": ref_src, "n": len(rows),
                       "unparsed": unparsed, "on_target_rate": fidelity["rate"],
                       "detected_languages": fidelity["counts"]}
            atomic_write_json(out / lang / "annotations.json", annotations)  # with its metrics, never without
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
