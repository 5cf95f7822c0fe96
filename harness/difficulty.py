"""Estimating the instruction difficulty and the gamed rows of the ``estimated`` LC source, offline.

AlpacaEval's length-controlled win rate (:func:`harness.metrics.length_controlled_winrate`) needs two things from
outside a model's own annotations: a per-instruction ``instruction_difficulty`` and "gamed baseline" rows
(AlpacaEval's ``df_gamed.csv``, on the Hugging Face Hub). The ``estimated`` source replaces both with our own
estimate, shipped in ``harness/presets/data`` (:data:`harness.metrics.ESTIMATED_DIFFICULTY_CSV`,
:data:`harness.metrics.ESTIMATED_GAMED_CSV` and the provenance JSON) and rebuilt from the shared data by
:func:`rebuild_estimated_presets` (``lc_inputs("estimated", difficulty_from=...)`` and ``harness score-annotations
--difficulty-from`` estimate them afresh from other annotation files with :func:`estimate_difficulty_and_gamed`):

1. ``instruction_difficulty`` from a joint logistic GLM over a pool of annotation sets (AlpacaEval's
   ``notebooks/instruction_difficulty.ipynb`` idea, own code; :func:`fit_joint_glm`):
   ``a_m + b_m * tanh(std_delta_len) + d_i`` with a bias ``a_m`` and length slope ``b_m`` per model and a difficulty
   ``d_i`` per instruction, soft labels, small L2 penalty. Where a pool model is in AlpacaEval's published GLM
   weights, its slope ``b_m`` is fixed to the published one: with a pool of similar models the instruction term
   otherwise soaks up part of the length effect (the reference answer's length is shared by all models), which
   biases LC by several points.
2. Replacement gamed rows (``df_gamed_estimated.csv``, same columns as ``df_gamed.csv``;
   :func:`synthesize_gamed_rows`): df_gamed pulls the fitted length and difficulty weights towards those of a
   length-varied copy of the reference. We synthesise such rows from the pool: each pool row gets the label
   ``sigmoid(s * tanh(std_delta_len) + d_i)`` (a model of the reference's quality with a typical length slope ``s``,
   the median published slope of the pool models), and per instruction the rows are averaged into two rows (the
   longer and the shorter half), i.e. 2 x 805 rows fitted with weight 0.1 each, exactly as df_gamed is.

Held out (difficulty and gamed rows from half of the 38 AlpacaEval 2 models with a published LC, LC of the other
half, and the reverse; four splits) this reproduces the official LC with a mean absolute error of 0.29-0.62 points
(max 1.3-2.6, Spearman >= 0.995). Fitting only the model's rows instead (no gamed rows) gave 1.70-1.87 with single
errors of 19 points; free slopes (no published weights) 0.44-0.76. ``tests/test_metrics.py -s`` prints the
figures. (AlpacaEval computed the published LC of the 5 files with missing rows with the row position as index;
here the true index is used, which differs from the published numbers for those files by up to about 3 points.)

X-AlpacaEval instruction *i* in every language is AlpacaEval instruction *i*, so one difficulty serves every
language.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness.annotations import load_annotations, load_many
from harness.errors import HarnessError
from harness.metrics import (ESTIMATED_DIFFICULTY_CSV, ESTIMATED_GAMED_CSV, ESTIMATED_PROVENANCE_JSON, N_INSTRUCTIONS,
                             PRESET_DATA)

log = logging.getLogger(__name__)

ANNOTATIONS_DIR = "alpacaeval2-annotations"  # in the shared data directory
PREFERENCES_CSV = "preferences.csv.gz"
GLM_WEIGHTS_CSV = "glm_weights_baseline_gpt4_1106_preview.csv"
# Length slope of AlpacaEval's two gamed baselines (gpt4_1106_preview_verbose / _concise) in the published GLM
# weights, mean of -1.5835 and -1.6425. Used as the gamed rows' slope when no pool model has published weights.
GAMED_BASELINE_LENGTH_SLOPE = -1.613
L2_DIFFICULTY = 1e-2  # joint fit: L2 on the instruction terms (keeps instructions every model loses finite)
L2_MODEL = 1e-4  # joint fit: L2 on the per-model bias and free slopes
# the columns of a df_gamed file (AlpacaEval's df_gamed.csv and our df_gamed_estimated.csv)
GAMED_COLUMNS = ["model", "index", "preference", "std_delta_len", "instruction_difficulty", "not_gamed_baseline"]


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
    """df_gamed-format regularisation rows from the pool (step 2 of the module docstring): 2 rows per instruction."""
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
        "rebuild": "harness.difficulty.rebuild_estimated_presets(data_dir)  # data_dir = the shared data",
        "validation": "tests/test_metrics.py::test_lc_estimated_held_out: difficulty and gamed rows estimated on half "
                      "of the models, LC of the other half vs the official length_controlled_winrate; measured "
                      "with this method: mean abs error 0.29-0.62 over 4 splits (max 1.3-2.6, Spearman >= 0.995)",
    }
    atomic_write_json(out / ESTIMATED_PROVENANCE_JSON.name, meta)
    return meta


__all__ = ["build_estimated_difficulty", "estimate_difficulty_and_gamed", "fit_joint_glm", "rebuild_estimated_presets",
           "synthesize_gamed_rows"]
