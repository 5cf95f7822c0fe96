"""AlpacaEval metrics of one model's annotation rows: win rate (WR) and length-controlled win rate (LC).

WR is AlpacaEval's own ``get_winrate`` (``alpaca_eval.metrics``): ``100 * mean(preference - 1)`` over valid rows.

LC is AlpacaEval's ``length_controlled_v1`` GLM (``alpaca_eval/metrics/glm_winrate.py``), fitted per model with
alpaca_eval's own ``make_dmatrix_for_model`` and ``fit_LogisticRegressionCV``::

    preference - 1 ~ np.tanh(std_delta_len) + instruction_difficulty + not_gamed_baseline - 1

on the model's rows plus "gamed baseline" rows (weight lambda/2 = 0.1 each), and LC = 100 * mean predict_proba at
``std_delta_len = 0``. Only the per-instruction ``instruction_difficulty`` and the gamed rows come from outside the
annotations; ``lc_source`` says where (each result records it; :func:`lc_inputs` resolves one):

``official``
    AlpacaEval's ``df_gamed.csv`` (Hugging Face dataset ``tatsu-lab/alpaca_eval``, cached by huggingface_hub, or a
    local copy passed as ``df_gamed=`` / ``--df-gamed`` / ``eval.df_gamed``; :func:`check_df_gamed` finds out at
    planning time whether it will be there). Identical to ``get_length_controlled_winrate`` (tested),
    but nothing is written into site-packages and the instruction index is the explicit ``index`` column.
``estimated`` (default; works offline)
    Our own estimate of both, shipped in ``presets/data`` (:data:`ESTIMATED_DIFFICULTY_CSV`,
    :data:`ESTIMATED_GAMED_CSV`) or re-estimated from other annotation files (``difficulty_from=``). How it is
    estimated, rebuilt and validated (held out, 0.29-0.62 points mean absolute error against the official LC): see
    :mod:`harness.difficulty`.
``minimal``
    AlpacaEval's ``length_controlled_minimal`` GLM: no instruction difficulty and no gamed rows.

Where the GLM cannot be fitted (fewer than 2 judged rows; fewer than its 5 cross-validation folds without gamed
rows, i.e. ``minimal``; length differences that do not vary) LC is None with ``lc_note`` saying why; undefined
standard errors are None too, never NaN. Preferences follow AlpacaEval's encoding ([1, 2], 0 or 1.5 for a draw, null
when unparsed); a file with any other value is refused with its row. :func:`lc_row_terms` gives the LC fit row by
row (label, fitted and length-neutral probability), for paired comparisons of two models.

X-AlpacaEval instruction *i* in every language is AlpacaEval instruction *i*, so the same difficulty applies to
every language (as the paper's authors did with the official file).

Elsewhere: reading annotation files, :func:`harness.annotations.score_annotations` and the ``harness
score-annotations`` command are in :mod:`harness.annotations`; estimating the instruction difficulty and the gamed
rows (and rebuilding the shipped files) in :mod:`harness.difficulty`.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
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
# columns of score_frame(), in this order
SCORE_COLUMNS = ["results_dir", "generator", "reference", "n_total", "win_rate", "standard_error", "n_wins",
                 "n_wins_base", "n_draws", "discrete_win_rate", "length_controlled_winrate", "lc_standard_error",
                 "lc_source", "lc_note", "avg_length", "source"]


# -- preferences ---------------------------------------------------------------------------------------------------
PREFERENCE_RULE = ("a preference must be in [1, 2] (1: the reference is better, 2: the model; 0 or 1.5: a draw) or "
                   "null (the judge's reply was not parsed)")


def _valid_preference(value: float) -> bool:
    """AlpacaEval's encoding: [1, 2], 0 for a draw, NaN for an unparsed reply. Anything else is a broken file (its
    rows would be dropped from WR but, through the GLM's soft labels, not from LC)."""
    return math.isnan(value) or value == 0 or 1 <= value <= 2


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
    """Resolve an LC source once: load or estimate the difficulty and the gamed rows it needs (``difficulty_from``:
    annotation files or a :func:`harness.annotations.load_annotations` frame of several models, see
    :func:`harness.difficulty.estimate_difficulty_and_gamed`)."""
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
    # imported here, not at the top: both modules import this one
    from harness.annotations import load_many
    from harness.difficulty import estimate_difficulty_and_gamed

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


def _reference_against_itself(rows: pd.DataFrame) -> bool:
    """Whether ``rows`` are the reference judged against itself (LC 50 by construction, as AlpacaEval)."""
    gens = set(rows["generator"].dropna().astype(str)) if "generator" in rows else set()
    refs = set(rows["generator_1"].dropna().astype(str)) if "generator_1" in rows else set()
    return len(refs) == 1 and refs == gens


@dataclass
class _LCFit:
    """The LC GLM fitted on one model's rows, with the design of that model's own rows (never the gamed rows)."""

    model: Any  # the fitted sklearn LogisticRegressionCV
    x_zero: pd.DataFrame  # every row of the model at std_delta_len = 0: LC is 100 * their mean probability
    x_own: pd.DataFrame  # the model's valid rows at their own std_delta_len (the rows it was fitted on)
    y_own: np.ndarray  # their labels: preference - 1 in [0, 1] (a draw 0.5)
    own_keep: np.ndarray  # one boolean per row of the model: valid (fitted on), in the order of the rows


def _fit_lc_glm(rows: pd.DataFrame, inputs: LCInputs) -> _LCFit:
    """Fit the LC GLM as alpaca_eval's ``get_length_controlled_winrate`` does, on rows where LC is defined (see
    :func:`lc_undefined_reason`): the model's rows, after the gamed rows where the source has them; rows whose
    preference is not a valid one (NaN, or outside [1, 2] and not 0) are left out of the fit."""
    _, GLM_INFO, fit_LogisticRegressionCV, make_dmatrix_for_model = _import_alpaca_eval()
    info = GLM_INFO[inputs.glm_name]
    xy, x_zero, weight = _featurize(rows, inputs, info["formula"], info["regularize_to_baseline_lambda"],
                                    make_dmatrix_for_model)
    n_gamed = len(inputs.gamed) if weight is not None else 0  # _featurize puts the gamed rows (if any) first
    if len(xy) != n_gamed + len(rows) or len(x_zero) != len(rows):
        raise HarnessError(f"LC design matrix has {len(xy)} rows, expected {n_gamed} gamed + {len(rows)} model rows "
                           f"(missing values in the gamed rows? {inputs.source}: {inputs.origin})")
    keep = xy["preference"].between(0, 1).to_numpy()  # in [0, 1] after the shift: valid, not NaN
    own = np.arange(len(xy)) >= n_gamed
    with warnings.catch_warnings(), _alpaca_eval_logging():
        warnings.simplefilter("ignore")  # sklearn deprecation chatter from alpaca_eval's call
        model = fit_LogisticRegressionCV(xy[keep], "preference", is_ytrue_proba=True,
                                         sample_weight=None if weight is None else weight[keep], **info["kwargs"])
    own_rows = xy[own & keep]
    return _LCFit(model, x_zero, own_rows.drop(columns=["preference"]), own_rows["preference"].to_numpy(float),
                  keep[own])


def length_controlled_winrate(rows: pd.DataFrame, inputs: LCInputs) -> dict[str, Any]:
    """LC of one model's rows (columns index, preference, len_1, len_2; generator/generator_1 optional).

    Where the GLM cannot be fitted (see :func:`lc_undefined_reason`) LC and its standard error are None and
    ``lc_note`` says why; rows whose preference is not a valid one (NaN, or outside [1, 2] and not 0) are left out of
    the fit, as they are out of the win rate. As in AlpacaEval, LC averages the length-neutral probability over
    every row of the model, those too."""
    if _reference_against_itself(rows):
        return {"length_controlled_winrate": 50.0, "lc_standard_error": 0.0, "lc_source": inputs.source,
                "lc_note": None, "glm_weights": {}}
    reason = lc_undefined_reason(rows, inputs)
    if reason is not None:
        return {"length_controlled_winrate": None, "lc_standard_error": None, "lc_source": inputs.source,
                "lc_note": reason, "glm_weights": {}}
    fit = _fit_lc_glm(rows, inputs)
    p = fit.model.predict_proba(fit.x_zero)[:, 1]
    return {"length_controlled_winrate": _plain(p.mean() * 100), "lc_standard_error": _plain(pd.Series(p).sem() * 100),
            "lc_source": inputs.source, "lc_note": None,
            "glm_weights": dict(zip(fit.x_zero.columns, map(float, fit.model.coef_[0])))}


def lc_row_terms(rows: pd.DataFrame, inputs: LCInputs) -> pd.DataFrame | None:
    """The LC fit of one model's rows, row by row, for paired comparisons (e.g. a bootstrap over instructions).

    Fits the same GLM as :func:`length_controlled_winrate` (same ``rows`` and ``inputs``) and returns one row per
    valid row of the model, in the order of ``rows`` (rows whose preference is NaN or invalid are left out, as they
    are out of the fit; the gamed rows are never returned), with the columns

    - ``index``: the instruction index;
    - ``y``: the label, ``preference - 1`` in [0, 1] (a draw, 1.5 or 0, is 0.5);
    - ``p_fit``: the GLM's probability at the row's own ``std_delta_len``;
    - ``p_zero``: its probability at ``std_delta_len = 0``, the row's LC term.

    Where every row is valid, ``100 * p_zero.mean()`` is LC. Where some are not, LC (as AlpacaEval) also averages the
    ``p_zero`` of those rows, which are not returned here, so the mean of the returned ones differs from it. None
    where LC is not a fitted number: undefined (see :func:`lc_undefined_reason`), or the reference against itself
    (50 by construction).
    """
    if _reference_against_itself(rows) or lc_undefined_reason(rows, inputs) is not None:
        return None
    fit = _fit_lc_glm(rows, inputs)
    return pd.DataFrame({"index": rows["index"].to_numpy(int)[fit.own_keep], "y": fit.y_own,
                         "p_fit": fit.model.predict_proba(fit.x_own)[:, 1],
                         "p_zero": fit.model.predict_proba(fit.x_zero[fit.own_keep])[:, 1]})


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


__all__ = ["LC_SOURCES", "LCInputs", "SCORE_COLUMNS", "check_df_gamed", "difficulty_from_gamed", "lc_inputs",
           "lc_row_terms", "lc_undefined_reason", "length_controlled_winrate", "load_df_gamed", "read_difficulty_csv",
           "read_gamed_csv", "score_frame", "win_rate"]
