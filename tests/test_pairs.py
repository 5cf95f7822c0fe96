"""Pair construction against a plain re-statement of the authors' optimize_alpha / selection (METHOD.md s. 4)."""

import math
import random

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.pairs import select_pairs


def authors_pairs(R, L, upper_bound=math.inf):
    """Loop-by-loop oracle: first alpha with the smallest |signed mean length gap|, then capped argmax/argmin."""
    best, best_alpha = float("inf"), 0.0
    for alpha in np.arange(0.0, 1.0, 0.001):
        diffs = []
        for r_row, l_row in zip(R, L):
            a = [r - alpha * l for r, l in zip(r_row, l_row)]
            c = max(range(len(a)), key=lambda j: (a[j], -j))
            w = min(range(len(a)), key=lambda j: (a[j], j))
            diffs.append(l_row[c] - l_row[w])
        gap = abs(np.mean(diffs))
        if gap < best:
            best, best_alpha = gap, alpha
    chosen, rejected = [], []
    for r_row, l_row in zip(R, L):
        a = [r - best_alpha * l for r, l in zip(r_row, l_row)]
        capped = [x if x < upper_bound else -math.inf for x in a]
        chosen.append(max(range(len(a)), key=lambda j: (capped[j], -j)))
        rejected.append(min(range(len(a)), key=lambda j: (a[j], j)))
    return float(best_alpha), chosen, rejected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_authors_algorithm(seed):
    rng = random.Random(seed)
    R = [[round(rng.gauss(0, 20), 4) for _ in range(5)] for _ in range(30)]
    L = [[rng.randint(0, 400) for _ in range(5)] for _ in range(30)]
    sel = select_pairs(R, L)
    alpha, chosen, rejected = authors_pairs(R, L)
    assert sel.alpha == pytest.approx(alpha, abs=1e-12)
    assert sel.chosen == chosen and sel.rejected == rejected


def test_length_control_moves_alpha_and_reduces_gap():
    # reward grows with length: without control, chosen responses are the long ones
    R = [[0.1 * l for l in row] for row in [[10, 200, 50, 400], [30, 20, 300, 90], [5, 500, 60, 70]]]
    L = [[10, 200, 50, 400], [30, 20, 300, 90], [5, 500, 60, 70]]
    free = select_pairs(R, L, length_control=False)
    lc = select_pairs(R, L)
    assert free.alpha == 0.0 and free.length_gap > 200
    assert lc.alpha > 0 and abs(lc.length_gap) < abs(free.length_gap)


def test_upper_bound_caps_chosen_only():
    R = [[1000.0, 10.0, -5.0]]
    L = [[1, 1, 1]]
    sel = select_pairs(R, L, length_control=False, upper_bound=500)
    assert sel.chosen == [1] and sel.rejected == [2]
    sel = select_pairs([[900.0, 800.0]], [[1, 1]], length_control=False, upper_bound=500)
    assert sel.chosen == [0] and sel.all_capped == 1  # every score capped: argmax of -inf is index 0


def test_ties_take_first_index_and_degenerate_pairs_are_kept():
    sel = select_pairs([[0.0, 0.0, 0.0]], [[5, 5, 5]])
    assert sel.chosen == [0] and sel.rejected == [0]


@pytest.mark.parametrize("R,msg", [([], "empty"), ([[]], "empty"), ([[1.0, float("nan")]], "NaN"),
                                   ([[1.0, float("inf")]], "NaN or inf"), ([[1.0, 2.0], [1.0]], "different numbers")])
def test_bad_rewards_are_named(R, msg):
    L = [[1] * len(r) for r in R]
    with pytest.raises(HarnessError, match=msg):
        select_pairs(R, L)
