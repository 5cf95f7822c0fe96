"""Reading AlpacaEval annotation files, and scoring them: ``score_annotations`` and ``harness score-annotations``.

Two formats, any number of models (:func:`load_annotations` reads one file, :func:`load_many` several):

- AlpacaEval's ``annotations.json`` (a JSON list of objects, plain or ``.gz``; one model per file, named after the
  file, or after ``<model>`` in AlpacaEval's ``results/<model>/<annotator>/annotations.json``);
- the compact CSV of the shared data (``preferences.csv.gz``: ``generator, results_dir, index, preference, len_1,
  len_2, ...``; or ``output_1``/``output_2`` instead of the lengths).

Each becomes one row per (model, instruction) with the columns of :data:`ANNOTATION_COLUMNS`. The instruction index
(0..804, AlpacaEval order, the same for every X-AlpacaEval language) is the ``index`` column where there is one;
otherwise instructions are matched to the shared ``x-alpacaeval/instructions/*.json`` (via $HARNESS_DATA), else a
complete file (805 rows) is taken in order, as AlpacaEval does. Bad input (malformed JSON or CSV, a preference
outside AlpacaEval's encoding, an index out of range or given twice, a model in two files) raises
:class:`~harness.errors.HarnessError` naming the file and row.

:func:`score_annotations` (and the command) scores such files with :func:`harness.metrics.score_frame`: WR and LC
per model, LC from the chosen source (:func:`harness.metrics.lc_inputs`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from harness.metrics import LC_SOURCES, N_INSTRUCTIONS, PREFERENCE_RULE, _valid_preference, lc_inputs, score_frame

log = logging.getLogger(__name__)

# columns of load_annotations(), in this order
ANNOTATION_COLUMNS = ["results_dir", "generator", "generator_1", "annotator", "index", "preference", "len_1",
                      "len_2", "source"]


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


# -- scoring -------------------------------------------------------------------------------------------------------
def score_annotations(paths: Sequence[str | Path] | str | Path, lc_source: str = "estimated",
                      difficulty_from: Sequence[str | Path] | None = None, *, df_gamed: str | Path | None = None,
                      glm_weights: str | Path | pd.DataFrame | None = None) -> pd.DataFrame:
    """WR and LC for every model in the annotation files, one row per model (columns
    :data:`harness.metrics.SCORE_COLUMNS`).

    ``lc_source``: ``estimated`` (shipped difficulty and gamed rows; with ``difficulty_from`` both are re-estimated
    from those annotation files, using ``glm_weights`` slopes where given), ``official`` (AlpacaEval's df_gamed.csv;
    ``df_gamed`` = a local copy) or ``minimal``.
    """
    frame = load_many(paths)
    inputs = lc_inputs(lc_source, difficulty_from=difficulty_from, df_gamed=df_gamed, glm_weights=glm_weights)
    return score_frame(frame, inputs)


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


__all__ = ["ANNOTATION_COLUMNS", "add_score_annotations_parser", "cmd_score_annotations", "load_annotations",
           "load_many", "score_annotations"]
