"""AlpacaEval metrics for annotation files: win rate (WR) and length-controlled win rate (LC).

WR is AlpacaEval's own ``get_winrate`` (``alpaca_eval.metrics``): ``100 * mean(preference - 1)`` over valid rows.

LC is AlpacaEval's ``length_controlled_v1`` GLM (``alpaca_eval/metrics/glm_winrate.py``), fitted per model with
alpaca_eval's own ``make_dmatrix_for_model`` and ``fit_LogisticRegressionCV``::

    preference - 1 ~ np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline - 1

on the model's rows plus "gamed baseline" rows (weight lambda/2 = 0.1 each), and LC = 100 * mean predict_proba at
``std_delta_len = 0``. Only the per-instruction ``instruction_difficulty`` and the gamed rows come from outside the
annotations; ``lc_source`` says where (each result records it):

``official``
    AlpacaEval's ``df_gamed.csv`` (Hugging Face dataset ``tatsu-lab/alpaca_eval``, cached by huggingface_hub, or a
    local copy passed as ``df_gamed=`` / ``--df-gamed`` / ``eval.df_gamed``; :func:`check_df_gamed` finds out at
    planning time whether it will be there). Identical to ``get_length_controlled_winrate`` (tested),
    but nothing is written into site-packages and the instruction index is the explicit ``index`` column.
``estimated`` (default; works offline)
    Our own estimate, shipped in ``presets/data`` and rebuilt by :func:`rebuild_estimated_presets`:

    1. ``instruction_difficulty`` from a joint logistic GLM over a pool of annotation sets (AlpacaEval's
       ``notebooks/instruction_difficulty.ipynb`` idea, own code): ``a_m + b_m * tanh(std_delta_len) + d_i`` with a
       bias ``a_m`` and length slope ``b_m`` per model and a difficulty ``d_i`` per instruction, soft labels, small
       L2 penalty. Where a pool model is in AlpacaEval's published GLM weights, its slope ``b_m`` is fixed to the
       published one: with a pool of similar models the instruction term otherwise soaks up part of the length
       effect (the reference answer's length is shared by all models), which biases LC by several points.
    2. Replacement gamed rows (``df_gamed_estimated.csv``, same columns as ``df_gamed.csv``): df_gamed pulls the
       fitted length and difficulty weights towards those of a length-varied copy of the reference. We synthesise
       such rows from the pool: each pool row gets the label ``sigmoid(s * tanh(std_delta_len) + d_i)`` (a model
       of the reference's quality with a typical length slope ``s``, the median published slope of the pool
       models), and per instruction the rows are averaged into two rows (the longer and the shorter half), i.e.
       2 x 805 rows fitted with weight 0.1 each, exactly as df_gamed is.

    Held out (difficulty and gamed rows from half of the 38 AlpacaEval 2 models with a published LC, LC of the
    other half, and the reverse; four splits) this reproduces the official LC with a mean absolute error of
    0.29-0.62 points (max 1.3-2.6, Spearman >= 0.995). Fitting only the model's rows instead (no gamed rows) gave
    1.70-1.87 with single errors of 19 points; free slopes (no published weights) 0.44-0.76.
    ``tests/test_metrics.py -s`` prints the figures. (AlpacaEval computed the published LC of the 5 files with
    missing rows with the row position as index; here the true index is used, which differs from the published
    numbers for those files by up to about 3 points.)
``minimal``
    AlpacaEval's ``length_controlled_minimal`` GLM: no instruction difficulty and no gamed rows.

Where the GLM cannot be fitted (fewer than 2 judged rows; fewer than its 5 cross-validation folds without gamed
rows, i.e. ``minimal``; length differences that do not vary) LC is None with ``lc_note`` saying why; undefined
standard errors are None too, never NaN. Preferences follow AlpacaEval's encoding ([1, 2], 0 or 1.5 for a draw, null
when unparsed); a file with any other value is refused with its row.

X-AlpacaEval instruction *i* in every language is AlpacaEval instruction *i*, so the same difficulty applies to
every language (as the paper's authors did with the official file).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import math
import os
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from harness.errors import HarnessError

log = logging.getLogger(__name__)

N_INSTRUCTIONS = 805
LC_SOURCES = ("official", "estimated", "minimal")
PRESET_DATA = Path(__file__).resolve().parent / "presets" / "data"
ESTIMATED_DIFFICULTY_CSV = PRESET_DATA / "instruction_difficulty_estimated.csv"
ESTIMATED_GAMED_CSV = PRESET_DATA / "df_gamed_estimated.csv"
ESTIMATED_PROVENANCE_JSON = PRESET_DATA / "instruction_difficulty_estimated.json"
HF_REPO_ID = "tatsu-lab/alpaca_eval"
DF_GAMED_FILENAME = "df_gamed.csv"
DF_GAMED_URL = f"https://huggingface.co/datasets/{HF_REPO_ID}/resolve/main/{DF_GAMED_FILENAME}"
ANNOTATIONS_DIR = "alpacaeval2-annotations"  # in the shared data directory
PREFERENCES_CSV = "preferences.csv.gz"
GLM_WEIGHTS_CSV = "glm_weights_baseline_gpt4_1106_preview.csv"
# Length slope of AlpacaEval's two gamed baselines (gpt4_1106_preview_verbose / _concise) in the published GLM
# weights, mean of -1.5835 and -1.6425. Used as the gamed rows' slope when no pool model has published weights.
GAMED_BASELINE_LENGTH_SLOPE = -1.613
L2_DIFFICULTY = 1e-2  # joint fit: L2 on the instruction terms (keeps instructions every model loses finite)
L2_MODEL = 1e-4  # joint fit: L2 on the per-model bias and free slopes
GAMED_COLUMNS = ["model", "index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"]

# columns of load_annotations(), in this order
ANNOTATION_COLUMNS = ["results_dir", "generator", "generator_1", "annotator", "index", "preference", "len_1",
                      "len_2", "source"]
SCORE_COLUMNS = ["results_dir", "generator", "reference", "n_total", "win_rate", "standard_error", "n_wins",
                 "n_wins_base", "n_draws", "discrete_win_rate", "length_controlled_winrate", "lc_standard_error",
                 "lc_source", "lc_note", "avg_length", "source"]


# -- readers -------------------------------------------------------------------------------------------------------
def load_annotations(path: str | Path) -> pd.DataFrame:
    """Read one annotation file into one row per (model, instruction).

    Accepted: AlpacaEval's ``annotations.json`` (a JSON list of objects, plain or ``.gz``) and the compact CSV of
    the shared data (``preferences.csv.gz``: ``generator, results_dir, index, preference, len_1, len_2, ...``; any
    number of models). Lengths are characters of ``output_1`` (reference) and ``output_2`` (model), or the
    ``len_1``/``len_2`` columns. The instruction index (0..804, AlpacaEval order; the same for every X-AlpacaEval
    language) is the ``index`` column where there is one; otherwise instructions are matched to the shared
    ``x-alpacaeval/instructions/*.json`` (via $HARNESS_DATA), else a complete file (805 rows) is taken in order, as
    AlpacaEval does. Returns the columns of :data:`ANNOTATION_COLUMNS`; bad input raises :class:`HarnessError`
    naming the file (and row).
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError("is a directory, not an annotation file" if path.is_dir() else
                           "annotation file does not exist", path)
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        frame = _read_compact_csv(path)
    elif name.endswith((".json", ".json.gz")):
        frame = _read_annotations_json(path)
    else:
        raise HarnessError("unknown annotation format: expected .json, .json.gz (AlpacaEval annotations) or "
                           ".csv, .csv.gz (one row per model and instruction index)", path)
    frame["source"] = str(path)
    for key, rows in frame.groupby(["results_dir", "generator"], sort=False):
        dup = rows["index"].duplicated()
        if dup.any():
            raise HarnessError(f"model {key[1]!r}: instruction index {int(rows['index'][dup].iloc[0])} appears twice",
                               path)
    return frame[ANNOTATION_COLUMNS].reset_index(drop=True)


def _results_dir_name(path: Path) -> str:
    """Model folder name for a JSON file: the file stem, or <model> in AlpacaEval's results/<model>/<annotator>/."""
    stem = path.name
    for suffix in (".gz", ".json"):
        stem = stem[: -len(suffix)] if stem.lower().endswith(suffix) else stem
    if stem == "annotations" and len(path.resolve().parents) >= 2:
        return path.resolve().parents[1].name
    return stem


def _read_annotations_json(path: Path) -> pd.DataFrame:
    from harness.io import read_json

    data = read_json(path)  # malformed JSON -> HarnessError with the line
    if not isinstance(data, list) or not data:
        raise HarnessError("expected a non-empty JSON list of annotation objects (AlpacaEval annotations.json)", path)
    has_index = any(isinstance(r, dict) and "index" in r for r in data)
    rows = []
    for k, r in enumerate(data, start=1):
        where = f"annotation {k}"
        if not isinstance(r, dict):
            raise HarnessError(f"{where} is not an object", path, k)
        if "preference" not in r:
            raise HarnessError(f"{where} has no 'preference'", path, k)
        pref = r["preference"]
        if pref is None:
            pref = math.nan
        elif isinstance(pref, bool) or not isinstance(pref, (int, float)):
            raise HarnessError(f"{where}: preference {pref!r} is not a number", path, k)
        if not _valid_preference(pref):
            raise HarnessError(f"{where}: {PREFERENCE_RULE} (got {pref!r})", path, k)
        lens = []
        for out_key, len_key in (("output_1", "len_1"), ("output_2", "len_2")):
            if isinstance(r.get(out_key), str):
                lens.append(len(r[out_key]))
            elif isinstance(r.get(len_key), int) and not isinstance(r.get(len_key), bool) and r[len_key] >= 0:
                lens.append(r[len_key])
            else:
                raise HarnessError(f"{where}: needs the text '{out_key}' (or a length '{len_key}')", path, k)
        idx = r.get("index")
        if has_index and (isinstance(idx, bool) or not isinstance(idx, int)):
            raise HarnessError(f"{where}: 'index' {idx!r} is not an integer (the file has an index column)", path, k)
        rows.append({"generator": r.get("generator_2"), "generator_1": r.get("generator_1"),
                     "annotator": r.get("annotator"), "index": idx, "preference": float(pref),
                     "len_1": lens[0], "len_2": lens[1], "instruction": r.get("instruction")})
    frame = pd.DataFrame(rows)
    frame["results_dir"] = _results_dir_name(path)
    frame["generator"] = frame["generator"].fillna(frame["results_dir"])
    if not has_index:
        frame["index"] = _infer_index(frame["instruction"].tolist(), path)
    frame["index"] = frame["index"].astype(int)
    _check_index_range(frame["index"], path, first_row=1)
    return frame


def _read_compact_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError, zlib.error) as e:
        raise HarnessError(f"cannot read CSV: {str(e).splitlines()[0] if str(e) else type(e).__name__}", path) from None
    missing = [c for c in ("preference", "index") if c not in frame.columns]
    if "generator" not in frame.columns and "results_dir" not in frame.columns:
        missing.append("generator (or results_dir)")
    has_len = {"len_1", "len_2"} <= set(frame.columns)
    has_out = {"output_1", "output_2"} <= set(frame.columns)
    if not (has_len or has_out):
        missing.append("len_1/len_2 (or output_1/output_2)")
    if missing:
        raise HarnessError(f"missing column(s): {', '.join(missing)} (have: {', '.join(map(str, frame.columns))})",
                           path)
    if not has_len:
        frame["len_1"] = frame["output_1"].fillna("").astype(str).str.len()
        frame["len_2"] = frame["output_2"].fillna("").astype(str).str.len()
    for col in ("preference", "index", "len_1", "len_2"):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & (frame[col].notna() | (col != "preference"))
        if col == "index":
            bad |= values.notna() & (values != values.round())
        if bad.any():
            k = int(np.flatnonzero(bad.to_numpy())[0])
            raise HarnessError(f"column {col!r}: {frame[col].iloc[k]!r} is not a valid number", path, k + 2)
        frame[col] = values
    bad = ~frame["preference"].map(_valid_preference)
    if bad.any():
        k = int(np.flatnonzero(bad.to_numpy())[0])
        raise HarnessError(f"column 'preference': {PREFERENCE_RULE} (got {frame['preference'].iloc[k]:g})",
                           path, k + 2)
    if "results_dir" not in frame.columns:
        frame["results_dir"] = frame["generator"]
    if "generator" not in frame.columns:
        frame["generator"] = frame["results_dir"]
    for col in ("generator_1", "annotator"):
        if col not in frame.columns:
            frame[col] = None
    frame["index"] = frame["index"].astype(int)
    _check_index_range(frame["index"], path, first_row=2)
    frame[["results_dir", "generator"]] = frame[["results_dir", "generator"]].astype(str)
    return frame


PREFERENCE_RULE = ("a preference must be in [1, 2] (1: the reference is better, 2: the model; 0 or 1.5: a draw) or "
                   "null (the judge's reply was not parsed)")


def _valid_preference(value: float) -> bool:
    """AlpacaEval's encoding: [1, 2], 0 for a draw, NaN for an unparsed reply. Anything else is a broken file (its
    rows would be dropped from WR but, through the GLM's soft labels, not from LC)."""
    return math.isnan(value) or value == 0 or 1 <= value <= 2


def _check_index_range(index: pd.Series, path: Path, first_row: int) -> None:
    bad = (index < 0) | (index >= N_INSTRUCTIONS)
    if bad.any():
        k = int(np.flatnonzero(bad.to_numpy())[0])
        raise HarnessError(f"instruction index {int(index.iloc[k])} is outside 0..{N_INSTRUCTIONS - 1}", path,
                           k + first_row)


@lru_cache(maxsize=4)
def _instruction_index_map(data_dir: str) -> dict[str, int]:
    """Instruction text -> AlpacaEval index over every X-AlpacaEval language in the shared data ({} if absent)."""
    folder = Path(data_dir) / "x-alpacaeval" / "instructions"
    mapping: dict[str, int] = {}
    ambiguous: set[str] = set()
    for f in sorted(folder.glob("*.json")):
        try:
            rows = json.loads(f.read_text(encoding="utf-8"))
            pairs = [(r["instruction"], int(r["id"])) for r in rows]
        except (ValueError, KeyError, TypeError) as e:
            log.warning("ignoring %s for instruction matching: %s", f, e)
            continue
        for text, i in pairs:
            if mapping.get(text, i) != i:
                ambiguous.add(text)
            mapping[text] = i
    for text in ambiguous:
        mapping.pop(text, None)
    return mapping


def _infer_index(instructions: list[Any], path: Path) -> list[int]:
    data = os.environ.get("HARNESS_DATA")
    if data and Path(data).is_dir() and all(isinstance(t, str) for t in instructions):
        mapping = _instruction_index_map(str(Path(data).resolve()))
        found = [mapping.get(t) for t in instructions]
        if mapping and None not in found and len(set(found)) == len(found):
            return found  # type: ignore[return-value]
    if len(instructions) == N_INSTRUCTIONS:
        return list(range(N_INSTRUCTIONS))  # complete file in AlpacaEval order: what AlpacaEval itself assumes
    raise HarnessError(f"{len(instructions)} annotations (not {N_INSTRUCTIONS}) and no 'index' field: cannot tell "
                       "which instruction each row is. Add 'index' (0..804) to every annotation, or set "
                       "HARNESS_DATA to the shared data so instructions are matched to x-alpacaeval/instructions",
                       path)


def load_many(paths: Sequence[str | Path] | str | Path) -> pd.DataFrame:
    """:func:`load_annotations` for several files, concatenated (a model may not appear in two files)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    seen: set[Path] = set()
    for p in paths:
        if Path(p).resolve() in seen:
            raise HarnessError("the same annotation file is given twice (its rows would be counted twice)", p)
        seen.add(Path(p).resolve())
    frames = [load_annotations(p) for p in paths]
    if not frames:
        raise HarnessError("no annotation files given")
    frame = pd.concat(frames, ignore_index=True)
    owners = frame.groupby(["results_dir", "generator"])["source"].nunique()
    if (owners > 1).any():
        rd, gen = owners[owners > 1].index[0]
        files = sorted(frame.loc[(frame.results_dir == rd) & (frame.generator == gen), "source"].unique())
        raise HarnessError(f"model {gen!r} ({rd}) appears in several files: {', '.join(files)}")
    return frame


# -- win rate ------------------------------------------------------------------------------------------------------
def _import_alpaca_eval():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation on import
            from alpaca_eval.metrics import get_winrate
            from alpaca_eval.metrics.glm_winrate import GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model
    except ImportError as e:  # e.g. setuptools>=81 removed pkg_resources
        raise HarnessError(f"cannot import alpaca_eval ({e}); install alpaca-eval>=0.6.6 with setuptools<81") from None
    return get_winrate, GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model


@contextmanager
def _alpaca_eval_logging():
    """alpaca_eval logs through the root logger (``logging.info("drop 1 outputs that are not preferences")``), and
    the first such call on a root logger without handlers installs a stderr handler (``logging.basicConfig``) that
    prints "INFO:root:..." raw from then on. While its metric functions run, root records below WARNING go to this
    module's debug log instead; warnings still reach stderr as they would without handlers."""
    root = logging.getLogger()

    def to_debug(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        log.debug("alpaca_eval: %s", record.getMessage())
        return False

    stand_in = logging.lastResort if not root.handlers and logging.lastResort is not None else None
    root.addFilter(to_debug)
    if stand_in is not None:
        root.addHandler(stand_in)  # a handler is present, so logging.info() does not call basicConfig()
    try:
        yield
    finally:
        root.removeFilter(to_debug)
        if stand_in is not None:
            root.removeHandler(stand_in)


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers; NaN (undefined, e.g. the standard error of one row) as None: metrics are
    written as JSON, which has no NaN."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def win_rate(preferences: Iterable[float] | pd.Series) -> dict[str, Any]:
    """AlpacaEval's ``get_winrate`` on a sequence of preferences (1 reference wins, 2 model wins, 1.5 or 0 draw,
    NaN / outside [1, 2] dropped): ``win_rate, standard_error, n_wins, n_wins_base, n_draws, n_total,
    discrete_win_rate`` (rates in percent). What is undefined is None, never NaN: the standard error of fewer than
    2 rows, the rates of no valid row."""
    get_winrate = _import_alpaca_eval()[0]
    prefs = pd.Series(list(preferences) if not isinstance(preferences, pd.Series) else preferences.to_numpy(),
                      dtype=float)
    with _alpaca_eval_logging():
        result = get_winrate(pd.DataFrame({"preference": prefs}))
    return {k: _plain(v) for k, v in result.items()}


# -- length-controlled win rate ------------------------------------------------------------------------------------
@dataclass
class LCInputs:
    """What one LC source needs besides the model's own rows (resolve once with :func:`lc_inputs`)."""

    source: str
    glm_name: str
    difficulty: pd.Series | None = None  # index 0..804 -> instruction_difficulty
    gamed: pd.DataFrame | None = None  # df_gamed-format regularisation rows
    origin: str = ""  # where difficulty / gamed rows came from, for reports
    info: dict = field(default_factory=dict)


def _df_gamed_missing(reason: str) -> HarnessError:
    return HarnessError(f"--lc-source official needs AlpacaEval's {DF_GAMED_FILENAME} and it could not be fetched "
                        f"from the Hugging Face Hub: {reason}. Download {DF_GAMED_URL} where there is internet and "
                        "pass it with --df-gamed PATH (config: eval.df_gamed; Python: df_gamed=PATH), or use "
                        "--lc-source estimated")


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_df_gamed(path: str | Path | None = None, cache_dir: str | Path | None = None) -> tuple[pd.DataFrame, str]:
    """AlpacaEval's ``df_gamed.csv``: a local copy, else the Hugging Face cache / Hub (never into site-packages)."""
    if path is None:
        try:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(repo_id=HF_REPO_ID, filename=DF_GAMED_FILENAME, repo_type="dataset",
                                   cache_dir=str(cache_dir) if cache_dir else None, local_files_only=_hf_offline())
        except Exception as e:  # offline, not cached, no network, hub errors: all the same to the user
            reason = type(e).__name__ + (" (offline and not in the Hugging Face cache)" if "Local" in
                                         type(e).__name__ or "Offline" in type(e).__name__ else "")
            raise _df_gamed_missing(reason) from None
    return read_gamed_csv(path), str(path)


def check_df_gamed(path: str | Path | None = None, cache_dir: str | Path | None = None,
                   timeout: float = 3.0) -> str:
    """Whether ``lc_source: official`` will find df_gamed.csv, checked when a run is planned: the local copy
    (read and checked), else the Hugging Face cache, else a HEAD request to the Hub (at most ``timeout`` seconds;
    none when HF_HUB_OFFLINE is set). Returns where it will come from; HarnessError if from nowhere."""
    if path is not None:
        read_gamed_csv(path)
        return str(path)
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(HF_REPO_ID, DF_GAMED_FILENAME, cache_dir=str(cache_dir) if cache_dir else None,
                                    repo_type="dataset")
    if isinstance(cached, str):
        return cached
    if _hf_offline():
        raise _df_gamed_missing("HF_HUB_OFFLINE is set and it is not in the Hugging Face cache")
    import urllib.request

    url = f"{constants.ENDPOINT}/datasets/{HF_REPO_ID}/resolve/main/{DF_GAMED_FILENAME}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            pass
    except Exception as e:  # no network, DNS, timeout, HTTP error
        raise _df_gamed_missing(f"not in the Hugging Face cache and {url} is unreachable "
                                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return url


def read_gamed_csv(path: str | Path) -> pd.DataFrame:
    """Read a df_gamed-format CSV (official or ``df_gamed_estimated.csv``) and check its columns."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError("df_gamed file does not exist", path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as e:
        raise HarnessError(f"cannot read CSV: {e}", path) from None
    need = ["index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise HarnessError(f"not a df_gamed file: missing column(s) {', '.join(missing)}", path)
    df = df.drop(columns=["model"], errors="ignore")
    if df["not_gamed_baseline"].dtype != bool:
        df["not_gamed_baseline"] = df["not_gamed_baseline"].astype(str).str.lower().isin(["true", "1", "1.0"])
    return df


def difficulty_from_gamed(df_gamed: pd.DataFrame) -> pd.Series:
    """``instruction_difficulty`` per index from a df_gamed table (first row of each index, as AlpacaEval)."""
    first = df_gamed.drop_duplicates("index")
    return pd.Series(first["instruction_difficulty"].to_numpy(float), index=first["index"].astype(int).to_numpy(),
                     name="instruction_difficulty").sort_index()


def read_difficulty_csv(path: str | Path = ESTIMATED_DIFFICULTY_CSV) -> pd.Series:
    """Read ``index,instruction_difficulty`` (805 finite values) into a Series indexed 0..804."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError("instruction difficulty file does not exist", path)
    try:
        df = pd.read_csv(path)
        s = pd.Series(df["instruction_difficulty"].to_numpy(float), index=df["index"].astype(int).to_numpy(),
                      name="instruction_difficulty").sort_index()
    except (KeyError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise HarnessError(f"expected columns index,instruction_difficulty: {e}", path) from None
    if list(s.index) != list(range(N_INSTRUCTIONS)) or not np.isfinite(s.to_numpy()).all():
        raise HarnessError(f"expected {N_INSTRUCTIONS} finite values for index 0..{N_INSTRUCTIONS - 1}", path)
    return s


def lc_inputs(lc_source: str = "estimated", *, difficulty_from: Sequence[str | Path] | pd.DataFrame | None = None,
              df_gamed: str | Path | None = None, glm_weights: str | Path | pd.DataFrame | None = None,
              hf_cache_dir: str | Path | None = None) -> LCInputs:
    """Resolve an LC source once: load or estimate the difficulty and the gamed rows it needs."""
    if lc_source not in LC_SOURCES:
        raise HarnessError(f"unknown lc_source {lc_source!r}; choose one of {', '.join(LC_SOURCES)}")
    if difficulty_from is not None and lc_source != "estimated":
        raise HarnessError(f"--difficulty-from only applies to --lc-source estimated (not {lc_source})")
    if lc_source == "minimal":
        return LCInputs("minimal", "length_controlled_minimal", origin="no instruction difficulty, no gamed rows")
    if lc_source == "official":
        gamed, where = load_df_gamed(df_gamed, cache_dir=hf_cache_dir)
        return LCInputs("official", "length_controlled_v1", difficulty_from_gamed(gamed), gamed, origin=where)
    if difficulty_from is None:
        gamed = read_gamed_csv(ESTIMATED_GAMED_CSV)
        return LCInputs("estimated", "length_controlled_v1", read_difficulty_csv(ESTIMATED_DIFFICULTY_CSV), gamed,
                        origin=f"shipped {ESTIMATED_DIFFICULTY_CSV.name} + {ESTIMATED_GAMED_CSV.name}")
    pool = difficulty_from if isinstance(difficulty_from, pd.DataFrame) else load_many(difficulty_from)
    est = estimate_difficulty_and_gamed(pool, glm_weights=glm_weights)
    return LCInputs("estimated", "length_controlled_v1", est["difficulty"], est["gamed"],
                    origin=f"estimated from {len(est['models'])} models", info=est)


def _featurize(rows: pd.DataFrame, inputs: LCInputs, formula: str, lam: float | None, make_dmatrix_for_model):
    """The design matrices of glm_winrate._get_featurized_data, with the difficulty looked up by our index."""
    df = pd.DataFrame({"preference": rows["preference"].astype(float).replace({0.0: 1.5}).to_numpy() - 1,
                       "index": rows["index"].astype(int).to_numpy()})
    delta = (rows["len_1"] - rows["len_2"]).astype(float)
    df["std_delta_len"] = (delta / delta.std()).to_numpy()
    if inputs.difficulty is not None:
        diff = inputs.difficulty.reindex(df["index"]).to_numpy(float)
        if not np.isfinite(diff).all():
            missing = df["index"][~np.isfinite(diff)].iloc[0]
            raise HarnessError(f"no instruction difficulty for index {missing} ({inputs.source}: {inputs.origin})")
        df["instruction_difficulty"] = diff
    df["not_gamed_baseline"] = True
    df_test = df.drop(columns=["preference", "index", "std_delta_len"]).copy()
    df_test["std_delta_len"] = 0
    if lam and inputs.gamed is not None:
        train = pd.concat([inputs.gamed, df], axis=0)
        weight = train["not_gamed_baseline"].astype(float) + (lam * (~train["not_gamed_baseline"])).astype(float) / 2
        xy_train, x_test = make_dmatrix_for_model(train, df_test, formula=formula)
        return xy_train, x_test, weight
    xy_train, x_test = make_dmatrix_for_model(df, df_test, formula=formula)
    return xy_train, x_test, None


def lc_undefined_reason(rows: pd.DataFrame, inputs: LCInputs) -> str | None:
    """Why the LC GLM cannot be fitted on ``rows`` (None if it can): it needs 2 judged rows, length differences
    that vary (they are standardised by their standard deviation), and, without gamed rows (``minimal``), as many
    judged rows as alpaca_eval's cross-validation has folds."""
    from alpaca_eval.metrics.glm_winrate import GLM_INFO

    info = GLM_INFO[inputs.glm_name]
    judged = int(rows["preference"].astype(float).map(lambda p: _valid_preference(p) and not math.isnan(p)).sum())
    with_gamed = inputs.gamed is not None and bool(info["regularize_to_baseline_lambda"])
    folds = 0 if with_gamed else int(info["kwargs"].get("n_splits", 0))
    if judged < max(2, folds):
        why = f" ({inputs.glm_name} cross-validates in {folds} folds)" if folds > 2 else ""
        return f"LC needs at least {max(2, folds)} judged rows{why}, has {judged}"
    spread = (rows["len_1"] - rows["len_2"]).astype(float).std()
    if not (math.isfinite(spread) and spread > 0):
        return "LC needs length differences (reference - model) that vary across rows; they are all equal"
    return None


def length_controlled_winrate(rows: pd.DataFrame, inputs: LCInputs) -> dict[str, Any]:
    """LC of one model's rows (columns index, preference, len_1, len_2; generator/generator_1 optional).

    Where the GLM cannot be fitted (see :func:`lc_undefined_reason`) LC and its standard error are None and
    ``lc_note`` says why; rows whose preference is not a valid one (NaN, or outside [1, 2] and not 0) are left out of
    the fit, as they are out of the win rate."""
    _, GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model = _import_alpaca_eval()
    info = GLM_INFO[inputs.glm_name]
    gens = set(rows["generator"].dropna().astype(str)) if "generator" in rows else set()
    refs = set(rows["generator_1"].dropna().astype(str)) if "generator_1" in rows else set()
    if len(refs) == 1 and refs == gens:  # the reference against itself: 50 by construction (as AlpacaEval)
        return {"length_controlled_winrate": 50.0, "lc_standard_error": 0.0, "lc_source": inputs.source,
                "lc_note": None, "glm_weights": {}}
    reason = lc_undefined_reason(rows, inputs)
    if reason is not None:
        return {"length_controlled_winrate": None, "lc_standard_error": None, "lc_source": inputs.source,
                "lc_note": reason, "glm_weights": {}}
    xy, x_test, weight = _featurize(rows, inputs, info["formula"], info["regularize_to_baseline_lambda"],
                                    make_dmatrix_for_model)
    keep = xy["preference"].between(0, 1).to_numpy()  # in [0, 1] after the shift: valid, not NaN
    xy = xy[keep]
    if weight is not None:
        weight = weight[keep]
    with warnings.catch_warnings(), _alpaca_eval_logging():
        warnings.simplefilter("ignore")  # sklearn deprecation chatter from alpaca_eval's call
        model = fit_LogisticRegressionCV(xy, "preference", is_ytrue_proba=True, sample_weight=weight, **info["kwargs"])
    p = model.predict_proba(x_test)[:, 1]
    return {"length_controlled_winrate": _plain(p.mean() * 100), "lc_standard_error": _plain(pd.Series(p).sem() * 100),
            "lc_source": inputs.source, "lc_note": None,
            "glm_weights": dict(zip(x_test.columns, map(float, model.coef_[0])))}


# -- scoring -------------------------------------------------------------------------------------------------------
def score_frame(frame: pd.DataFrame, inputs: LCInputs) -> pd.DataFrame:
    """One row per model (results_dir, generator) of a :func:`load_annotations` frame: WR and LC."""
    out = []
    for (rd, gen), rows in frame.groupby(["results_dir", "generator"], sort=True):
        wr = win_rate(rows["preference"])
        lc = length_controlled_winrate(rows, inputs)
        refs = sorted(str(r) for r in rows["generator_1"].dropna().unique())
        out.append({"results_dir": rd, "generator": gen, "reference": ",".join(refs), **wr,
                    "length_controlled_winrate": lc["length_controlled_winrate"],
                    "lc_standard_error": lc["lc_standard_error"], "lc_source": lc["lc_source"],
                    "lc_note": lc["lc_note"] or "", "avg_length": float(rows["len_2"].mean()),
                    "source": ",".join(sorted(rows["source"].unique())) if "source" in rows else ""})
    result = pd.DataFrame(out)
    return result[[c for c in SCORE_COLUMNS if c in result.columns]]


def score_annotations(paths: Sequence[str | Path] | str | Path, lc_source: str = "estimated",
                      difficulty_from: Sequence[str | Path] | None = None, *, df_gamed: str | Path | None = None,
                      glm_weights: str | Path | pd.DataFrame | None = None) -> pd.DataFrame:
    """WR and LC for every model in the annotation files, one row per model (columns :data:`SCORE_COLUMNS`).

    ``lc_source``: ``estimated`` (shipped difficulty and gamed rows; with ``difficulty_from`` both are re-estimated
    from those annotation files, using ``glm_weights`` slopes where given), ``official`` (AlpacaEval's df_gamed.csv;
    ``df_gamed`` = a local copy) or ``minimal``.
    """
    frame = load_many(paths)
    inputs = lc_inputs(lc_source, difficulty_from=difficulty_from, df_gamed=df_gamed, glm_weights=glm_weights)
    return score_frame(frame, inputs)


# -- estimating the instruction difficulty -------------------------------------------------------------------------
def _read_glm_weights(glm_weights: str | Path | pd.DataFrame | None) -> pd.Series:
    """Published per-model length slopes (``np.tanh(std_delta_len)`` column), indexed by results_dir."""
    if glm_weights is None:
        return pd.Series(dtype=float)
    if isinstance(glm_weights, pd.DataFrame):
        w = glm_weights
    else:
        p = Path(glm_weights)
        if not p.is_file():
            raise HarnessError("GLM weights file does not exist", p)
        w = pd.read_csv(p, index_col=0)
    col = "np.tanh(std_delta_len)"
    if col not in w.columns:
        raise HarnessError(f"GLM weights need the column {col!r}", None if isinstance(glm_weights, pd.DataFrame)
                           else glm_weights)
    return w[col].astype(float)


def _pool_rows(frame: pd.DataFrame, models: Sequence[str] | None) -> pd.DataFrame:
    """Rows usable for the joint fit: chosen models, not the reference against itself, finite labels."""
    df = frame.copy()
    if models is not None:
        wanted = set(models)
        df = df[df["results_dir"].isin(wanted) | df["generator"].isin(wanted)]
        found = set(df["results_dir"]) | set(df["generator"])
        if wanted - found:
            raise HarnessError(f"model(s) not in the annotations: {', '.join(sorted(wanted - found))}")
    df = df[df["generator"].astype(str) != df["generator_1"].astype(str)]
    df["key"] = df["results_dir"].astype(str) + "\t" + df["generator"].astype(str)
    delta = (df["len_1"] - df["len_2"]).astype(float)
    std = delta.groupby(df["key"]).transform("std")  # per model over all its rows, as AlpacaEval
    df["t"] = np.tanh(delta / std)
    df["y"] = df["preference"].astype(float).replace({0.0: 1.5}) - 1
    df = df[np.isfinite(df["t"]) & df["y"].between(0, 1)]
    if df["key"].nunique() < 2:
        raise HarnessError("estimating the instruction difficulty needs annotations of at least 2 models")
    return df


def fit_joint_glm(pool: pd.DataFrame, fixed_slopes: dict[str, float] | None = None) -> dict[str, Any]:
    """Joint soft-label logistic GLM ``a_m + b_m * t + d_i`` over the pool (rows: key, index, t, y).

    Slopes of models in ``fixed_slopes`` (by key) are held at those values; the rest are free. Small L2 penalties
    (:data:`L2_DIFFICULTY`, :data:`L2_MODEL`) make it well posed. Returns difficulty (Series 0..804), bias, slope.
    """
    from scipy.optimize import minimize
    from scipy.special import expit

    fixed_slopes = fixed_slopes or {}
    keys = sorted(pool["key"].unique())
    m = pool["key"].map({k: j for j, k in enumerate(keys)}).to_numpy()
    i = pool["index"].to_numpy(int)
    t = pool["t"].to_numpy(float)
    y = pool["y"].to_numpy(float)
    n_m, n_i = len(keys), N_INSTRUCTIONS
    is_fixed = np.array([k in fixed_slopes for k in keys])
    b_fixed = np.array([fixed_slopes.get(k, 0.0) for k in keys])

    def loss(theta):
        a, b_free, d = theta[:n_m], theta[n_m:2 * n_m], theta[2 * n_m:]
        b = np.where(is_fixed, b_fixed, b_free)
        z = a[m] + b[m] * t + d[i]
        g = expit(z) - y
        value = (np.logaddexp(0, z) - y * z).sum() + 0.5 * L2_DIFFICULTY * d @ d \
            + 0.5 * L2_MODEL * (a @ a + b_free[~is_fixed] @ b_free[~is_fixed])
        grad_b = np.where(is_fixed, 0.0, np.bincount(m, g * t, n_m) + L2_MODEL * b_free)
        return value, np.concatenate([np.bincount(m, g, n_m) + L2_MODEL * a, grad_b,
                                      np.bincount(i, g, n_i) + L2_DIFFICULTY * d])

    # run to the optimum (ftol 0: stop only when no step reduces the loss; the penalised loss is strictly convex, so
    # the optimum is unique): difficulties then agree across CPUs and BLAS to ~1e-5 instead of depending on where
    # the default tolerance happens to stop, which left them ~0.02 apart
    res = minimize(loss, np.zeros(2 * n_m + n_i), jac=True, method="L-BFGS-B",
                   options={"maxiter": 20000, "maxfun": 40000, "ftol": 0.0, "gtol": 1e-8})
    if not res.success:
        log.warning("joint difficulty fit: %s", res.message)
    a, b = res.x[:n_m], np.where(is_fixed, b_fixed, res.x[n_m:2 * n_m])
    return {"difficulty": pd.Series(res.x[2 * n_m:], index=range(n_i), name="instruction_difficulty"),
            "bias": dict(zip(keys, map(float, a))), "slope": dict(zip(keys, map(float, b))),
            "converged": bool(res.success), "iterations": int(res.nit)}


def synthesize_gamed_rows(pool: pd.DataFrame, difficulty: pd.Series, length_slope: float) -> pd.DataFrame:
    """df_gamed-format regularisation rows from the pool (see the module docstring): 2 rows per instruction."""
    from scipy.special import expit

    g = pool[["index", "t"]].copy()
    g["instruction_difficulty"] = difficulty.reindex(g["index"]).to_numpy(float)
    g["preference"] = expit(length_slope * g["t"] + g["instruction_difficulty"])
    g = g.sort_values(["index", "t"], kind="mergesort")
    rank = g.groupby("index").cumcount()
    size = g.groupby("index")["t"].transform("size")
    g["model"] = np.where(rank < size / 2, "pool_longer_half", "pool_shorter_half")
    agg = g.groupby(["model", "index"], sort=True).agg(t=("t", "mean"), preference=("preference", "mean"),
                                                       instruction_difficulty=("instruction_difficulty", "first"))
    agg = agg.reset_index()
    agg["std_delta_len"] = np.arctanh(np.clip(agg["t"], -1 + 1e-9, 1 - 1e-9))
    agg["not_gamed_baseline"] = False
    return agg[GAMED_COLUMNS].reset_index(drop=True)


def estimate_difficulty_and_gamed(pool_frame: pd.DataFrame, models: Sequence[str] | None = None,
                                  glm_weights: str | Path | pd.DataFrame | None = None) -> dict[str, Any]:
    """Estimate ``instruction_difficulty`` and the replacement gamed rows from annotations of several models.

    ``glm_weights``: AlpacaEval's published per-model GLM weights (keyed by results_dir); pool models found there
    keep their published length slope and the gamed rows use the median of those slopes (else
    :data:`GAMED_BASELINE_LENGTH_SLOPE`). Only pool models' weights are read.
    """
    pool = _pool_rows(pool_frame, models)
    slopes = _read_glm_weights(glm_weights)
    key_to_rd = pool.drop_duplicates("key").set_index("key")["results_dir"]
    fixed = {k: float(slopes[rd]) for k, rd in key_to_rd.items() if rd in slopes.index}
    fit = fit_joint_glm(pool, fixed)
    target = float(np.median(list(fixed.values()))) if fixed else GAMED_BASELINE_LENGTH_SLOPE
    gamed = synthesize_gamed_rows(pool, fit["difficulty"], target)
    return {"difficulty": fit["difficulty"], "gamed": gamed, "models": sorted(key_to_rd.tolist()),
            "fixed_slope_models": sorted(key_to_rd[list(fixed)].tolist()), "gamed_length_slope": target,
            "n_rows": int(len(pool)), "converged": fit["converged"], "iterations": fit["iterations"]}


def build_estimated_difficulty(preferences_csv: str | Path | Sequence[str | Path] | pd.DataFrame,
                               models: Sequence[str] | None = None,
                               glm_weights: str | Path | pd.DataFrame | None = None) -> pd.Series:
    """The estimated ``instruction_difficulty`` (805 values, index 0..804) from annotations of several models
    (the compact preferences CSV, annotation files, or a :func:`load_annotations` frame); ``models`` restricts the
    pool (results_dir or generator names). See :func:`estimate_difficulty_and_gamed`."""
    frame = preferences_csv if isinstance(preferences_csv, pd.DataFrame) else load_many(preferences_csv)
    return estimate_difficulty_and_gamed(frame, models, glm_weights)["difficulty"]


def rebuild_estimated_presets(data_dir: str | Path | None = None, out_dir: str | Path = PRESET_DATA) -> dict:
    """Rebuild the shipped ``instruction_difficulty_estimated.csv``, ``df_gamed_estimated.csv`` and the provenance
    JSON from the shared data's ``alpacaeval2-annotations`` (all its models with published GLM weights used)."""
    from harness.io import atomic_write_json, atomic_write_text, file_hash

    data = Path(data_dir or os.environ.get("HARNESS_DATA") or "")
    src = data / ANNOTATIONS_DIR / PREFERENCES_CSV
    wsrc = data / ANNOTATIONS_DIR / GLM_WEIGHTS_CSV
    for p in (src, wsrc):
        if not p.is_file():
            raise HarnessError("needs the shared data (set HARNESS_DATA or pass data_dir)", p)
    est = estimate_difficulty_and_gamed(load_annotations(src), glm_weights=wsrc)
    out = Path(out_dir)
    diff = est["difficulty"].rename_axis("index").reset_index()
    atomic_write_text(out / ESTIMATED_DIFFICULTY_CSV.name, diff.to_csv(index=False, float_format="%.12g"))
    atomic_write_text(out / ESTIMATED_GAMED_CSV.name, est["gamed"].to_csv(index=False, float_format="%.12g"))
    meta = {
        "what": "per-instruction difficulty (AlpacaEval index 0..804) and replacement gamed-baseline rows for the "
                "length-controlled win rate, estimated without AlpacaEval's df_gamed.csv",
        "files": [ESTIMATED_DIFFICULTY_CSV.name, ESTIMATED_GAMED_CSV.name],
        "method": [
            "joint soft-label logistic GLM over all models' annotations: logit = a_m + b_m*tanh(std_delta_len) + "
            f"d_i (scipy L-BFGS-B run to the optimum, L2 {L2_DIFFICULTY} on d_i, {L2_MODEL} on a_m and free b_m); "
            "std_delta_len = (len_1 - len_2) / std per model; label = preference - 1 (0 -> draw)",
            "b_m fixed to the published AlpacaEval GLM slope (np.tanh(std_delta_len) weight) for models that have "
            "one; instruction_difficulty = d_i",
            "gamed rows: every pool row labelled sigmoid(s*tanh(std_delta_len) + d_i) with s = median published "
            "slope of the pool models, then per instruction averaged over the longer and the shorter half of the "
            "rows (mean tanh -> std_delta_len = arctanh), not_gamed_baseline = False: 2 x 805 rows used like "
            "df_gamed.csv (weight lambda/2 = 0.1 each)",
        ],
        "sources": [{"path": f"{ANNOTATIONS_DIR}/{PREFERENCES_CSV}", "sha256": file_hash(src, 64)},
                    {"path": f"{ANNOTATIONS_DIR}/{GLM_WEIGHTS_CSV}", "sha256": file_hash(wsrc, 64)}],
        "models": est["models"],
        "models_with_fixed_published_slope": est["fixed_slope_models"],
        "gamed_length_slope": est["gamed_length_slope"],
        "n_rows": est["n_rows"],
        "fit_converged": est["converged"],
        "date": _dt.date.today().isoformat(),
        "rebuild": "harness.metrics.rebuild_estimated_presets(data_dir)  # data_dir = the shared data",
        "validation": "tests/test_metrics.py::test_lc_estimated_held_out: difficulty and gamed rows estimated on half "
                      "of the models, LC of the other half vs the official length_controlled_winrate; measured "
                      "with this method: mean abs error 0.29-0.62 over 4 splits (max 1.3-2.6, Spearman >= 0.995)",
    }
    atomic_write_json(out / ESTIMATED_PROVENANCE_JSON.name, meta)
    return meta


# -- CLI -----------------------------------------------------------------------------------------------------------
EPILOG = """examples:
  harness score-annotations results/*/weighted_alpaca_eval_gpt4_turbo/annotations.json
  harness score-annotations preferences.csv.gz --lc-source minimal --out scores.csv
  harness score-annotations ann.json --lc-source official --df-gamed ~/Downloads/df_gamed.csv
"""


def add_score_annotations_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``score-annotations`` to the harness CLI."""
    p = subparsers.add_parser(
        "score-annotations", help="win rate and length-controlled win rate of AlpacaEval annotation files",
        description="Score AlpacaEval annotations (annotations.json[.gz] or the compact preferences CSV): "
                    "win rate and length-controlled win rate per model.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH", help="annotation files")
    p.add_argument("--lc-source", choices=LC_SOURCES, default="estimated",
                   help="instruction difficulty for LC: estimated (shipped, offline; default), official "
                        "(AlpacaEval's df_gamed.csv from the Hub or --df-gamed) or minimal (none)")
    p.add_argument("--difficulty-from", nargs="+", metavar="PATH",
                   help="re-estimate the difficulty from these annotation files (needs 2+ models)")
    p.add_argument("--glm-weights", metavar="PATH",
                   help="with --difficulty-from: AlpacaEval's published GLM weights CSV (slopes of known models)")
    p.add_argument("--df-gamed", metavar="PATH", help="local copy of AlpacaEval's df_gamed.csv (official)")
    p.add_argument("--out", metavar="FILE.csv", help="also write the table as CSV")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(fn=cmd_score_annotations)
    return p


def _pm(value: float | None, se: float | None) -> str:
    """``value ± se`` for the table; n/a where undefined (None or NaN)."""
    def ok(x):
        return x is not None and math.isfinite(x)

    if not ok(value):
        return "n/a"
    return f"{value:.2f} ± {se:.2f}" if ok(se) else f"{value:.2f}"


def cmd_score_annotations(args: argparse.Namespace) -> int:
    from rich.table import Table

    from harness.io import atomic_write_text, check_output_file
    from harness.ui import console

    if args.glm_weights and not args.difficulty_from:
        raise HarnessError("--glm-weights only applies with --difficulty-from")
    if args.difficulty_from and args.lc_source != "estimated":
        raise HarnessError(f"--difficulty-from only applies to --lc-source estimated (not {args.lc_source})")
    if args.df_gamed and args.lc_source != "official":
        raise HarnessError(f"--df-gamed only applies to --lc-source official (not {args.lc_source})")
    if args.out:
        check_output_file(args.out, "--out")  # before any work: a directory or an unwritable place is refused now
    frame = load_many(args.paths)
    inputs = lc_inputs(args.lc_source, difficulty_from=args.difficulty_from, df_gamed=args.df_gamed,
                       glm_weights=args.glm_weights)
    result = score_frame(frame, inputs)
    table = Table(title=f"AlpacaEval scores (LC: {inputs.source}, {inputs.origin})")
    for col, justify in (("model", "left"), ("generator", "left"), ("n", "right"), ("WR ± se", "right"),
                         ("LC ± se", "right"), ("avg len", "right")):
        table.add_column(col, justify=justify)
    for r in result.sort_values("length_controlled_winrate", ascending=False).itertuples():
        table.add_row(r.results_dir, r.generator if r.generator != r.results_dir else "", str(r.n_total),
                      _pm(r.win_rate, r.standard_error), _pm(r.length_controlled_winrate, r.lc_standard_error),
                      f"{r.avg_length:.0f}")
    console.print(table)
    for r in result[result["lc_note"] != ""].itertuples():
        console.print(f"LC n/a for {r.results_dir}: {r.lc_note}")
    where = "nothing was written"
    if args.out:
        out = atomic_write_text(args.out, result.to_csv(index=False))
        where = f"wrote {out} ({len(result)} rows)"
    console.print(f"score-annotations: {len(result)} model(s) from {len(args.paths)} file(s), LC source "
                  f"{inputs.source}; {where}")
    return 0


__all__ = ["LC_SOURCES", "LCInputs", "add_score_annotations_parser", "build_estimated_difficulty",
           "check_df_gamed", "cmd_score_annotations", "estimate_difficulty_and_gamed", "fit_joint_glm", "lc_inputs",
           "lc_undefined_reason", "length_controlled_winrate", "load_annotations", "load_df_gamed", "load_many",
           "read_difficulty_csv", "read_gamed_csv", "rebuild_estimated_presets", "score_annotations", "score_frame",
           "synthesize_gamed_rows", "win_rate"]
