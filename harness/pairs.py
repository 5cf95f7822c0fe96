"""Length-controlled preference pairs, exactly as METHOD.md section 4 (the authors' optimize_alpha).

For one language: rewards R[i][j] and lengths L[i][j] (prompt i, sample j).

1. Alpha search over ``numpy.arange(0, alpha_max, alpha_step)``: A = R - alpha*L; c_i = argmax_j A, w_i = argmin_j A
   (first index on ties); D(alpha) = mean_i (L[i, c_i] - L[i, w_i]); keep the FIRST alpha with the smallest |D|.
   The search ignores the upper bound.
2. Selection with alpha*: chosen = argmax over A where A < U (others -inf; all capped -> index 0), rejected =
   argmin A. One pair per prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from harness.errors import HarnessError


@dataclass
class Selection:
    alpha: float
    length_gap: float  # D(alpha*)
    chosen: list[int]
    rejected: list[int]
    adjusted: np.ndarray  # A at alpha*
    all_capped: int  # prompts where every A >= U
    trace: list[tuple[float, float]] = field(default_factory=list)


def _matrix(rows: list[list[float]], what: str) -> np.ndarray:
    if not rows:
        raise HarnessError(f"no {what}: the response set is empty")
    widths = {len(r) for r in rows}
    if 0 in widths:
        raise HarnessError(f"a prompt has an empty response set ({what})")
    if len(widths) != 1:
        raise HarnessError(f"prompts have different numbers of responses ({sorted(widths)}); {what} must be a matrix")
    m = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        raise HarnessError(f"{what} contain NaN or inf")
    return m


def search_alpha(R: np.ndarray, L: np.ndarray, step: float = 0.001, alpha_max: float = 1.0
                 ) -> tuple[float, float, list[tuple[float, float]]]:
    best_alpha, best_gap, best_abs = 0.0, math.nan, math.inf
    trace = []
    rows = np.arange(R.shape[0])
    for alpha in np.arange(0.0, alpha_max, step):
        A = R - alpha * L
        c = np.argmax(A, axis=1)
        w = np.argmin(A, axis=1)
        gap = float(np.mean(L[rows, c] - L[rows, w]))
        trace.append((float(alpha), gap))
        if abs(gap) < best_abs:
            best_alpha, best_gap, best_abs = float(alpha), gap, abs(gap)
    return best_alpha, best_gap, trace


def select_pairs(rewards: list[list[float]], lengths: list[list[float]], *, length_control: bool = True,
                 step: float = 0.001, alpha_max: float = 1.0, upper_bound: float | None = None) -> Selection:
    R = _matrix(rewards, "rewards")
    L = _matrix(lengths, "lengths")
    if R.shape != L.shape:
        raise HarnessError(f"rewards {R.shape} and lengths {L.shape} differ in shape")
    rows = np.arange(R.shape[0])
    if length_control:
        alpha, _, trace = search_alpha(R, L, step, alpha_max)
    else:
        alpha, trace = 0.0, []
    A = R - alpha * L
    capped = A if upper_bound is None else np.where(A < upper_bound, A, -np.inf)
    chosen = np.argmax(capped, axis=1)
    rejected = np.argmin(A, axis=1)
    all_capped = 0 if upper_bound is None else int(np.sum(np.all(A >= upper_bound, axis=1)))
    gap = float(np.mean(L[rows, chosen] - L[rows, rejected]))
    return Selection(alpha, gap, chosen.tolist(), rejected.tolist(), A, all_capped, trace)
