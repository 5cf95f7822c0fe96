"""harness.sampling: the nucleus is transformers' TopPLogitsWarper's, and the draw has the distribution it claims."""

import math

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from harness.sampling import BLOCK, TokenDraw, draw, nucleus


def _frequencies(probs: torch.Tensor, draws: int, fn=draw) -> torch.Tensor:
    """Counts of each token over ``draws`` independent draws from one row of probabilities."""
    chunk = max(1, 2**23 // probs.shape[-1])  # rows per call: 32 MB of float32
    counts = torch.zeros(probs.shape[-1], dtype=torch.long)
    left = draws
    while left:
        rows = min(chunk, left)
        counts += torch.bincount(fn(probs.expand(rows, -1)), minlength=probs.shape[-1])
        left -= rows
    return counts


def _assert_matches(counts: torch.Tensor, probs: torch.Tensor) -> None:
    """No draw of a token of probability 0, and the counts where their expectation is large enough for a normal
    approximation within 5.5 standard deviations (about 1 in 10^7 by chance): each token expected 25 times or
    more on its own, the others in runs of consecutive ids expected about 100 times together (runs, so that a
    draw that favours some blocks of the vocabulary over others shows)."""
    n = int(counts.sum())
    p = probs.double() / probs.double().sum()
    assert int(counts[p == 0].sum()) == 0
    big = n * p >= 25
    runs = ((n * p * ~big).cumsum(0) / 100).floor().long()
    runs = runs.clamp(max=max(int(runs.max()) - 1, 0))  # the last, short run joins the one before
    groups = torch.where(big, -1 - torch.arange(len(p)), runs)
    _, at = torch.unique(groups, return_inverse=True)
    seen = torch.zeros(int(at.max()) + 1, dtype=torch.float64).index_add_(0, at, counts.double())
    share = torch.zeros_like(seen).index_add_(0, at, p)
    z = ((seen - n * share).abs() / (n * share * (1 - share)).sqrt().clamp(min=1e-9)).max().item()
    assert z < 5.5, f"a count is {z:.1f} standard deviations from its expectation"


def _rows(n: int, vocab: int, seed: int) -> torch.Tensor:
    """Scores from flat to peaked, as a model's are at different steps."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, vocab, generator=g) * torch.rand(n, 1, generator=g) * 8


@pytest.mark.parametrize("top_p", [0.3, 0.9, 0.99])
def test_the_nucleus_is_the_set_transformers_keeps(top_p):
    scores = _rows(2000, 3000, seed=1)
    theirs = torch.isfinite(TopPLogitsWarper(top_p)(None, scores.clone()))
    kept, ids = nucleus(torch.softmax(scores, -1), top_p)
    ours = torch.zeros_like(theirs).scatter_(1, ids, kept > 0)
    differ = (theirs != ours).any(1).nonzero()[:, 0]
    # transformers sums the ascending probabilities in float32, this module the descending ones in float64: a row
    # may differ only where the mass above a token is top_p up to that rounding
    probs = torch.softmax(scores[differ].double(), -1)
    for row, p in zip(differ.tolist(), probs):
        flipped = (theirs[row] != ours[row]).nonzero()[:, 0]
        above = torch.stack([p[p > p[t]].sum() for t in flipped])
        assert (above - top_p).abs().max() < 1e-5, f"row {row}: {flipped.tolist()} is no rounding case"
    assert len(differ) <= 20  # of 2,000 rows
    assert (kept > 0).sum(1).min() >= 1  # the most likely token is always kept


def test_the_nucleus_widens_its_search_for_flat_rows():
    flat = torch.full((3, 8192), 1 / 8192)  # exact in binary: a token is kept while the mass above it is < 0.5
    kept, ids = nucleus(flat, 0.5)  # the first 64 tokens hold 0.8% of the mass
    assert kept.shape[1] >= 4096 and ((kept > 0).sum(1) == 4096).all()
    kept, ids = nucleus(flat, 1.0 - 1e-9)
    assert kept.shape[1] == 8192 and ((kept > 0).sum(1) == 8192).all()


@pytest.mark.parametrize("vocab", [7, 300, 3 * BLOCK, 1000, 49152])
def test_draws_have_the_distribution_of_the_probabilities(vocab):
    g = torch.Generator().manual_seed(vocab)
    probs = torch.softmax(torch.randn(vocab, generator=g) * 2, -1)
    probs[torch.rand(vocab, generator=g) < 0.3] = 0  # tokens another processor removed
    probs[0] = 0
    draws = 200_000 if vocab < 10_000 else 40_000
    _assert_matches(_frequencies(probs, draws), probs)


def test_the_frequency_check_sees_a_draw_that_is_one_token_off():
    probs = torch.softmax(torch.randn(300, generator=torch.Generator().manual_seed(3)) * 2, -1)
    with pytest.raises(AssertionError):
        _assert_matches(_frequencies(probs, 100_000, fn=lambda p: (draw(p) + 1) % p.shape[-1]), probs)


def test_a_row_of_one_token_and_unnormalised_weights():
    one = torch.zeros(4, 1000)
    one[:, 777] = 1e-30
    assert draw(one).tolist() == [777] * 4
    weights = torch.tensor([[0.0, 3.0, 1.0, 0.0]])
    counts = _frequencies(weights[0], 100_000)
    _assert_matches(counts, weights[0])


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.9), (1.3, 1.0), (1.0, 0.5)])
def test_token_draw_samples_the_tempered_nucleus(temperature, top_p):
    """What the processor makes generate take: a draw from softmax(scores / T) restricted to the nucleus, the
    distribution transformers' TemperatureLogitsWarper + TopPLogitsWarper + multinomial draw from."""
    scores = _rows(1, 800, seed=7)[0] + 0.0
    target = torch.softmax(TopPLogitsWarper(top_p)(None, (scores / temperature)[None]), -1)[0]
    proc = TokenDraw(temperature, top_p)

    def through_generate(rows):  # what generate does with the processed scores (greedy: argmax)
        return proc(None, rows.clone()).argmax(-1)

    _assert_matches(_frequencies(scores, 100_000, fn=through_generate), target)


def test_token_draw_is_seeded_and_rejects_bad_settings():
    scores = _rows(64, 5000, seed=2)
    torch.manual_seed(5)
    a = TokenDraw(0.9, 0.95)(None, scores.clone()).argmax(-1)
    torch.manual_seed(5)
    b = TokenDraw(0.9, 0.95)(None, scores.clone()).argmax(-1)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) > 1
    for bad in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.0), dict(temperature=1.0, top_p=1.5)):
        with pytest.raises(ValueError):
            TokenDraw(**bad)
    assert math.isclose(TokenDraw(0.5).temperature, 0.5)
