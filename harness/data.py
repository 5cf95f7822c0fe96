"""Loaders with schema checks for the data the loop reads.

- Parallel prompts (UltraFeedback, machine-translated; ICR's ``random_N`` subsets): one file per language, the same
  prompt ids in the same order in every language. Rows are ``{id, prompt, prompt_en}`` (the shared data's form) or
  upstream's ``{instruction_id, instruction}``; ``prompt_en`` is then taken from the English file.
- English preference pairs for stage 0: the shipped ``builtin:english_prefs``, a local JSONL with
  ``prompt``/``chosen``/``rejected``, or ``hub:HuggingFaceH4/ultrafeedback_binarized`` (needs internet).

Local copies are read from the data directory (``data_dir`` in the config, else ``$HARNESS_DATA``). Users with
internet can name ``upstream:random_N``: the files are downloaded once from the ICR repository into the harness cache.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.io import file_hash, iter_jsonl, stable_hash

log = logging.getLogger(__name__)

DATA_ENV = "HARNESS_DATA"
ICR_COMMIT = "168a4207912c562de2f72c7c08ff12156beb2815"
ICR_RAW = ("https://raw.githubusercontent.com/ZNLP/Implicit-Cross-Lingual-Rewarding/"
           f"{ICR_COMMIT}/data/ultrafeedback_binarized/subset/{{subset}}/{{lang}}.jsonl")
BUILTIN_ENGLISH_PREFS = Path(__file__).parent / "presets" / "data" / "english_prefs.jsonl"


def data_dir(configured: str | None = None, required: bool = True) -> Path | None:
    value = configured or os.environ.get(DATA_ENV)
    if not value:
        if required:
            raise HarnessError(f"no local data directory: set {DATA_ENV}=/path/to/shared/data (or data_dir: in the "
                               "config, or --data-dir); with internet use prompts.source: upstream:random_1000")
        return None
    p = Path(value).expanduser()
    if not p.is_dir():
        raise HarnessError(f"data directory does not exist (from {'config' if configured else DATA_ENV})", p)
    return p


@dataclass(frozen=True)
class Prompt:
    id: str
    prompt: str
    prompt_en: str


@dataclass
class PromptSet:
    folder: Path
    by_lang: dict[str, list[Prompt]]
    fingerprint: str

    @property
    def n(self) -> int:
        return len(next(iter(self.by_lang.values())))


def _lang_file(folder: Path, lang: str) -> Path:
    for name in (f"{lang}.jsonl", f"{lang}.jsonl.gz"):
        if (folder / name).exists():
            return folder / name
    have = sorted(p.name.split(".")[0] for p in folder.glob("*.jsonl*"))
    raise HarnessError(f"no prompt file for language '{lang}' (languages here: {', '.join(have) or 'none'})",
                       folder / f"{lang}.jsonl")


def _download(url: str, dest: Path, hint: str = "") -> Path:
    """Download once into the harness cache (atomic); offline, say how to use a local copy instead."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            body = r.read()
    except Exception as e:
        raise HarnessError(f"could not download {url} ({e}); offline, point data_dir (or ${DATA_ENV}) at a local "
                           f"copy of the shared data{'; ' + hint if hint else ''}") from None
    tmp = dest.with_suffix(".partial")
    tmp.write_bytes(body)
    os.replace(tmp, dest)
    return dest


def _download_upstream(subset: str, langs: list[str]) -> Path:
    from harness.models import cache_dir

    folder = cache_dir() / "data" / "ultrafeedback-parallel" / subset
    for lang in sorted(set(langs) | {"en"}):
        _download(ICR_RAW.format(subset=subset, lang=lang), folder / f"{lang}.jsonl",
                  "use prompts.source: ultrafeedback-parallel/random_1000")
    return folder


DEMO_LANGS = ("en", "es", "de", "fr", "ru", "zh")


def derive_demo_subset(random_1000: Path, out: Path, size: int = 48) -> Path:
    """The shared data's demo-subset rule, applied to random_1000: English prompt < 200 characters, translated
    (differs from English) in every demo language, the first ``size`` ids in ascending order, in file order."""
    from harness.io import atomic_write_jsonl

    rows = {}
    for lang in DEMO_LANGS:
        rows[lang] = [r for _, r in iter_jsonl(_lang_file(random_1000, lang))]
    def pid(r):
        return str(r.get("id", r.get("instruction_id")))

    def text(r):
        return r.get("prompt", r.get("instruction"))

    en = {pid(r): text(r) for r in rows["en"]}
    other = {lang: {pid(r): text(r) for r in rows[lang]} for lang in DEMO_LANGS if lang != "en"}
    ok = [i for i, t in en.items() if len(t) < 200 and all(o.get(i) not in (None, t) for o in other.values())]
    keep = set(sorted(ok)[:size])
    for lang in DEMO_LANGS:
        atomic_write_jsonl(out / f"{lang}.jsonl", [{"id": pid(r), "prompt": text(r), "prompt_en": en[pid(r)]}
                                                 for r in rows[lang] if pid(r) in keep])
    return out


def resolve_prompt_folder(source: str, configured_data_dir: str | None, langs: list[str]) -> Path:
    if source.startswith("upstream:"):
        return _download_upstream(source.split(":", 1)[1], langs)
    if source == "ultrafeedback-parallel/demo-subset" and data_dir(configured_data_dir, required=False) is None:
        # no local copy: users with internet get the same subset, derived from the upstream random_1000
        from harness.models import cache_dir

        out = cache_dir() / "data" / "ultrafeedback-parallel" / "demo-subset"
        if not (out / "zh.jsonl").exists():
            derive_demo_subset(_download_upstream("random_1000", list(DEMO_LANGS)), out)
        return out
    p = Path(source).expanduser()
    if p.is_absolute():
        if not p.is_dir():
            raise HarnessError("prompt folder does not exist", p)
        return p
    root = data_dir(configured_data_dir)
    folder = root / source
    if not folder.is_dir():
        raise HarnessError("prompt folder does not exist in the data directory", folder)
    return folder


def pending_download(source: str, langs: list[str], configured_data_dir: str | None = None) -> str | None:
    """What ``load_prompts`` would download for this source (None when everything is local or cached)."""
    from harness.models import cache_dir

    if source.startswith("upstream:"):
        subset = source.split(":", 1)[1]
        folder = cache_dir() / "data" / "ultrafeedback-parallel" / subset
    elif source == "ultrafeedback-parallel/demo-subset" and data_dir(configured_data_dir, required=False) is None:
        subset, langs = "random_1000", list(DEMO_LANGS)
        folder = cache_dir() / "data" / "ultrafeedback-parallel" / "demo-subset"
    else:
        return None
    missing = [lang for lang in sorted(set(langs) | {"en"}) if not (folder / f"{lang}.jsonl").exists()]
    if not missing:
        return None
    return f"{subset} ({', '.join(missing)}) from the ICR repository at commit {ICR_COMMIT[:7]}"


def subset_size(source: str) -> int | None:
    """N of an ICR ``random_N`` subset name (the number of prompts per language), else None."""
    tail = source.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    return int(tail.split("_", 1)[1]) if tail.startswith("random_") and tail.split("_", 1)[1].isdigit() else None


def load_prompts(source: str, langs: list[str], configured_data_dir: str | None = None,
                 limit: int | None = None) -> PromptSet:
    """Load and check parallel prompts; ``limit`` keeps the first N (the same ids in every language)."""
    folder = resolve_prompt_folder(source, configured_data_dir, langs)
    raw: dict[str, list[tuple[int, dict]]] = {}
    for lang in sorted(set(langs) | ({"en"} if (folder / "en.jsonl").exists() or
                                     (folder / "en.jsonl.gz").exists() else set())):
        raw[lang] = list(iter_jsonl(_lang_file(folder, lang)))
    english: dict[str, str] = {}
    if "en" in raw:
        for row_no, row in raw["en"]:
            pid = row.get("id", row.get("instruction_id"))
            text = row.get("prompt", row.get("instruction"))
            if pid is not None and isinstance(text, str):
                english[str(pid)] = text
    by_lang: dict[str, list[Prompt]] = {}
    ref_ids: list[str] | None = None
    ref_lang = None
    for lang in langs:
        path = _lang_file(folder, lang)
        rows: list[Prompt] = []
        for row_no, row in raw[lang]:
            pid = row.get("id", row.get("instruction_id"))
            if pid is None or str(pid).strip() == "":
                raise HarnessError("missing field 'id' (or 'instruction_id')", path, row_no)
            text = row.get("prompt", row.get("instruction"))
            if not isinstance(text, str) or not text.strip():
                raise HarnessError("missing or empty instruction (field 'prompt' or 'instruction')", path, row_no)
            en = row.get("prompt_en")
            if en is None:
                en = text if lang == "en" else english.get(str(pid))
            if not isinstance(en, str) or not en.strip():
                raise HarnessError(f"no English instruction for id {pid} (field 'prompt_en', or the same id in "
                                   "en.jsonl)", path, row_no)
            rows.append(Prompt(str(pid), text, en))
        if limit is not None:
            rows = rows[:limit]
        ids = [r.id for r in rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise HarnessError(f"duplicate prompt id {dup}", path, raw[lang][ids.index(dup)][0])
        if ref_ids is None:
            ref_ids, ref_lang = ids, lang
        elif ids != ref_ids:
            k = next((k for k, (a, b) in enumerate(zip(ids, ref_ids)) if a != b), min(len(ids), len(ref_ids)))
            if k >= len(ids) or k >= len(ref_ids):
                msg = f"has {len(ids)} prompts but {ref_lang} has {len(ref_ids)}"
            else:
                msg = f"prompt id {ids[k]} does not line up with {ref_lang}'s id {ref_ids[k]} at the same position"
            raise HarnessError(f"prompt ids differ across languages: {msg}", path,
                               raw[lang][min(k, len(raw[lang]) - 1)][0])
        if not rows:
            raise HarnessError("no prompts", path)
        by_lang[lang] = rows
    fp = stable_hash({lang: [(p.id, p.prompt, p.prompt_en) for p in rows] for lang, rows in by_lang.items()})
    return PromptSet(folder, by_lang, fp)


@dataclass(frozen=True)
class PreferencePair:
    id: str
    prompt: str
    chosen: str
    rejected: str


def load_english_prefs(source: str, limit: int | None = None) -> tuple[list[PreferencePair], str]:
    """Stage-0 pairs and a fingerprint of what was read."""
    if source.startswith("hub:"):
        return _load_hub_prefs(source.split(":", 1)[1], limit)
    path = BUILTIN_ENGLISH_PREFS if source == "builtin:english_prefs" else Path(source).expanduser()
    if path.is_dir():
        raise HarnessError("stage0.dataset is a directory; expected a JSONL file with prompt/chosen/rejected", path)
    pairs: list[PreferencePair] = []
    for row_no, row in iter_jsonl(path):
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise HarnessError(f"missing or empty field '{key}'", path, row_no)
        pairs.append(PreferencePair(str(row.get("id", row_no)), row["prompt"], row["chosen"], row["rejected"]))
    if not pairs:
        raise HarnessError("no preference pairs", path)
    pairs = pairs[:limit] if limit else pairs
    return pairs, stable_hash([file_hash(path), limit])


def _load_hub_prefs(repo: str, limit: int | None) -> tuple[list[PreferencePair], str]:
    try:
        from datasets import load_dataset

        split = "train_prefs" if "ultrafeedback_binarized" in repo else "train"
        ds = load_dataset(repo, split=split)
    except Exception as e:
        raise HarnessError(f"could not load the hub dataset '{repo}' ({type(e).__name__}); offline, give a local "
                           "JSONL with prompt/chosen/rejected as stage0.dataset") from None
    pairs = []
    for i, row in enumerate(ds):
        if limit and i >= limit:
            break
        ch, rj = row["chosen"], row["rejected"]
        ch = ch[-1]["content"] if isinstance(ch, list) else ch
        rj = rj[-1]["content"] if isinstance(rj, list) else rj
        pairs.append(PreferencePair(str(row.get("prompt_id", i)), row["prompt"], ch, rj))
    return pairs, stable_hash([repo, split, limit, len(pairs)])


# -- X-AlpacaEval ------------------------------------------------------------------------------------------------
XALPACA_N = 805
DEFAULT_REFERENCE = "gpt-4-turbo-2024-04-09"
REFERENCE_LANGUAGES = ("bn", "de", "en", "es", "fr", "ru", "sw", "th", "zh")  # DEFAULT_REFERENCE's, upstream
ICR_XALPACA_RAW = ("https://raw.githubusercontent.com/ZNLP/Implicit-Cross-Lingual-Rewarding/"
                   f"{ICR_COMMIT}/data/x-alpacaeval/data/{{lang}}.json")
ICR_REFERENCE_RAW = ("https://raw.githubusercontent.com/ZNLP/Implicit-Cross-Lingual-Rewarding/"
                     f"{ICR_COMMIT}/results/base_model/x-alpacaeval_format/{{lang}}/{{generator}}/model_outputs.json")


def _as_id(value) -> int | None:
    """An X-AlpacaEval id as written in a file: an integer or a string of digits (else None)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def eval_subset(limit: int | None) -> list[int]:
    """A deterministic subset of X-AlpacaEval ids spread evenly over 0..804 (so every source dataset appears)."""
    if limit is None or limit >= XALPACA_N:
        return list(range(XALPACA_N))
    return sorted({(i * XALPACA_N) // limit for i in range(limit)})


def xalpaca_instructions_file(lang: str, configured_data_dir: str | None = None) -> Path | None:
    """The X-AlpacaEval instructions of ``lang`` in the data directory, without reading them (None without a data
    directory: they are downloaded when loaded)."""
    root = data_dir(configured_data_dir, required=False)
    if root is None:
        return None
    folder = root / "x-alpacaeval" / "instructions"
    path = next((folder / n for n in (f"{lang}.json", f"{lang}.json.gz") if (folder / n).exists()), None)
    if path is None:
        raise HarnessError(f"no X-AlpacaEval instructions for language '{lang}'", folder / f"{lang}.json")
    return path


def load_xalpaca_instructions(lang: str, configured_data_dir: str | None = None) -> list[dict]:
    """805 rows {id (= AlpacaEval index), dataset, instruction}."""
    from harness.io import read_json

    path = xalpaca_instructions_file(lang, configured_data_dir)
    if path is not None:
        shift = 0
    else:
        from harness.models import cache_dir

        path = _download(ICR_XALPACA_RAW.format(lang=lang), cache_dir() / "data" / "x-alpacaeval" / f"{lang}.json")
        shift = 1  # upstream ids are 1-based
    rows = read_json(path)
    if not isinstance(rows, list):
        raise HarnessError("expected a JSON list of {id, dataset, instruction}", path)
    out = []
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict) or not isinstance(r.get("instruction"), str) or not r["instruction"].strip():
            raise HarnessError("missing or empty 'instruction'", path, i)
        if "id" in r and _as_id(r["id"]) is None:
            raise HarnessError(f"'id' {r['id']!r} is not a whole number", path, i)
        rid = (_as_id(r["id"]) if "id" in r else i - 1 + shift) - shift
        out.append({"id": rid, "dataset": r.get("dataset", ""), "instruction": r["instruction"]})
    if [r["id"] for r in out] != list(range(len(out))):
        raise HarnessError("ids are not 0..N-1 in order (X-AlpacaEval instruction i must be AlpacaEval index i)", path)
    return out


def is_reference_file(source: str) -> bool:
    """Whether a reference (``eval.reference`` / ``eval.references``) names a model_outputs.json, not a generator
    or a model."""
    return source.endswith((".json", ".json.gz")) or Path(source).expanduser().exists()


def reference_outputs_file(lang: str, source: str, configured_data_dir: str | None = None) -> Path | None:
    """Where the reference outputs for ``lang`` are, without reading them: the file ``source`` names, or the
    generator's file in the data directory; None without a data directory (the ICR repository's file is downloaded
    when loaded). A generator with no outputs for ``lang`` in the data directory is a HarnessError."""
    if is_reference_file(source):
        return Path(source).expanduser()
    root = data_dir(configured_data_dir, required=False)
    if root is None:
        return None
    folder = root / "x-alpacaeval" / "references" / source
    path = next((folder / n for n in (f"{lang}.json.gz", f"{lang}.json") if (folder / n).exists()), None)
    if path is None:
        have = sorted(x.name.split(".")[0] for x in folder.glob("*.json*")) if folder.exists() else []
        raise HarnessError(f"no '{source}' reference outputs for language '{lang}' (available: "
                           f"{', '.join(have) or 'none'}); name another reference for it: "
                           f"eval.references: {{{lang}: MODEL or model_outputs.json}}", folder)
    return path


def load_reference_outputs(lang: str, source: str, configured_data_dir: str | None = None) -> tuple[dict, str, str]:
    """Reference outputs by id: the shipped generator name (gpt-4-turbo-2024-04-09) or a model_outputs.json path.

    Returns ({id: output}, generator name, where it came from)."""
    path = reference_outputs_file(lang, source, configured_data_dir)
    if path is None:
        from harness.models import cache_dir

        path = _download(ICR_REFERENCE_RAW.format(lang=lang, generator=source),
                         cache_dir() / "data" / "x-alpacaeval-references" / source / f"{lang}.json")
    out, generator = read_model_outputs(path, default_generator=source)
    return out, generator, str(path)


def read_model_outputs(path: str | Path, instructions: list[dict] | None = None,
                       default_generator: str = "") -> tuple[dict[int, str], str]:
    """An AlpacaEval ``model_outputs.json`` (``[{instruction, output, generator, dataset, id?}]``) as
    ({X-AlpacaEval id: output}, generator).

    The id is the row's ``id`` (0-based; a file whose ids are exactly 1..N, as the ICR repository's, is shifted);
    without ids, a row is matched by its ``instruction`` to ``instructions`` (X-AlpacaEval rows of the language) when
    given, else by its position. A row without an output, a bad or repeated id, an instruction that matches none:
    HarnessError naming the file and row."""
    from harness.io import read_json

    path = Path(path)
    rows = read_json(path)
    if not isinstance(rows, list):
        raise HarnessError("expected a JSON list in AlpacaEval model_outputs format", path)
    for i, r in enumerate(rows, start=1):
        if not isinstance(r, dict) or not isinstance(r.get("output"), str):
            raise HarnessError("missing 'output'", path, i)
        if "id" in r and _as_id(r["id"]) is None:
            raise HarnessError(f"'id' {r['id']!r} is not a whole number (the X-AlpacaEval instruction id)", path, i)
    ids = [_as_id(r["id"]) for r in rows if "id" in r]
    shift = 1 if ids and min(ids) == 1 and max(ids) == len(rows) else 0  # upstream ICR files are 1-based
    by_text = {r["instruction"].strip(): r["id"] for r in instructions or []} if not ids else {}
    out, generator = {}, default_generator
    for i, r in enumerate(rows, start=1):
        if "id" in r:
            rid = _as_id(r["id"]) - shift
        elif by_text:
            text = r.get("instruction")
            rid = by_text.get(text.strip()) if isinstance(text, str) else None
            if rid is None:
                raise HarnessError("no 'id', and the instruction is not one of X-AlpacaEval's in this language "
                                   f"({str(text)[:60]!r})", path, i)
        else:
            rid = i - 1
        if rid in out:
            raise HarnessError(f"id {r.get('id', rid)!r} appears twice", path, i)
        out[rid] = r["output"]
        generator = r.get("generator", generator)
    return out, generator
