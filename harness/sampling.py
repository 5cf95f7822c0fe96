"""Drawing the next token from a model's scores: temperature, then top-p (nucleus), then one draw per row.

This is what ``generate(do_sample=True)`` does in transformers, drawn another way. transformers sorts the whole
vocabulary for top-p, and draws with ``torch.multinomial``. On a CPU, ``torch.multinomial`` fills a
vocabulary-sized tensor with exponential variates for every row at every step (argmax p/q, q ~ Exp(1)), one by one
in double precision. For the demo's sampling batch (192 rows x 49,152 tokens) that took 270 ms a step on the AVX2
EPYC, and the sort 465 ms, against about 1 s for the model's whole decoding step. Here:

- the nucleus is found among each row's most likely tokens (``topk``, widened until it holds ``top_p`` of the mass),
  not by sorting all of them;
- the draw takes one uniform variate per row and inverts the cumulative distribution, accumulated in float64: over
  the (float32) sums of blocks of 128 tokens first, then within the chosen block.

The distribution is the same as transformers': ``softmax(scores / temperature)``, restricted to the smallest set of
most likely tokens whose mass reaches ``top_p`` (a token is kept when the mass of the tokens above it is below
``top_p``, and the first is always kept). A token of probability 0 is never drawn. ``tests/test_sampling.py``
compares the kept sets with ``TopPLogitsWarper`` and the draws' frequencies with the probabilities. Which token a
given seed draws differs from ``torch.multinomial``, so outputs differ from those of harness before 2026-12-08.
"""

from __future__ import annotations

BLOCK = 128  # tokens per block of the two-level cumulative sum
FIRST_K = 64  # top tokens searched for the nucleus first; widened 8x at a time while some row needs more


def nucleus(probs, top_p: float):
    """Each row's most likely tokens, in descending order of probability, as (probs, ids), with the probabilities
    of the tokens beyond the nucleus set to 0. The nucleus is a prefix of each row."""
    import torch

    vocab = probs.shape[-1]
    k = min(vocab, FIRST_K)
    while True:
        vals, ids = probs.topk(k, dim=-1)
        cum = vals.cumsum(-1, dtype=torch.float64)
        if k == vocab or bool((cum[:, -1] >= top_p).all()):
            break
        k = min(vocab, k * 8)
    keep = (cum - vals) < top_p  # the mass above each token
    keep[:, 0] = True
    return vals * keep, ids


def _last_positive(x):
    """Index of the last entry > 0 in each row (0 for a row without one)."""
    import torch

    return ((x > 0).cumsum(-1) == (x > 0).sum(-1, keepdim=True)).to(torch.int8).argmax(-1, keepdim=True)


def _first_above(weights, cum, target):
    """For each row, the first index whose cumulative weight ``cum`` exceeds ``target``; never one of weight 0 (a
    target at or past the row's total, by rounding, gives its last token of positive weight)."""
    import torch

    return torch.minimum(torch.searchsorted(cum, target, right=True), _last_positive(weights))


def draw(probs, generator=None):
    """One token id per row of ``probs`` (non-negative weights, not necessarily normalised), drawn with one
    uniform variate per row: the block by the cumulative sum of the blocks' sums, then the token within the block
    by its own; both cumulative sums in float64."""
    import torch

    rows, vocab = probs.shape
    u = torch.rand((rows, 1), dtype=torch.float64, device=probs.device, generator=generator)
    if vocab <= 4 * BLOCK:
        cum = probs.cumsum(-1, dtype=torch.float64)
        return _first_above(probs, cum, u * cum[:, -1:])[:, 0]
    pad = -vocab % BLOCK
    blocks = torch.nn.functional.pad(probs, (0, pad)) if pad else probs
    blocks = blocks.reshape(rows, -1, BLOCK)
    sums = blocks.sum(-1).double()  # float32 sums of 128 (a float64 sum of the whole tensor costs 4x the draw)
    cum = sums.cumsum(-1)
    target = u * cum[:, -1:]
    block = _first_above(sums, cum, target)
    before = (cum.gather(1, block) - sums.gather(1, block)).clamp_(min=0)
    inside = blocks[torch.arange(rows, device=probs.device), block[:, 0]]
    within = (target - before).clamp_(min=0)
    at = _first_above(inside, inside.cumsum(-1, dtype=torch.float64), within)
    return (block * BLOCK + at)[:, 0]


class TokenDraw:
    """A transformers logits processor that samples: it returns the probabilities with the drawn token's set to
    2 (every other is at most 1), so ``generate(do_sample=False)``, which takes the argmax, takes the drawn token.
    It goes last among the processors (transformers appends custom ones after its own, such as the repetition
    penalty). It divides the scores it is given in place: ``generate`` makes them afresh at every step."""

    def __init__(self, temperature: float, top_p: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"TokenDraw samples: temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self.temperature, self.top_p = float(temperature), float(top_p)

    def __call__(self, input_ids, scores):
        import torch

        if self.temperature != 1:
            scores = scores.div_(self.temperature) if scores.dtype == torch.float32 else scores.float() / self.temperature
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        if self.top_p < 1:
            kept, ids = nucleus(probs, self.top_p)
            tokens = ids.gather(1, draw(kept)[:, None])
        else:
            tokens = draw(probs)[:, None]
        return probs.scatter_(1, tokens, 2.0)

    def __repr__(self) -> str:
        return f"TokenDraw(temperature={self.temperature}, top_p={self.top_p})"
