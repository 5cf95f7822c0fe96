"""harness.lm_head.CpuLogProbs against TRL's ChunkedLogProbFunction and a float64 log_softmax on the same operands."""

import pytest
import torch

import harness.lm_head as lm_head

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


def _inputs(n=300, hidden=64, vocab=5000, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * 0.3
    t = torch.randint(0, vocab, (n,), generator=g)
    t[:5] = h[:5].mm(w.t()).argmax(1)  # some targets are the top-1 token
    return h, w, t


def _run(fn, h, w, t, autocast: bool, grad_entropy: bool = False):
    h = h.clone().requires_grad_()
    w = w.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        lp, ent, _, mean, top1 = fn(h, w, None, t, 1.0, 1024, None, 1.0, OUTPUTS)
    loss = -(lp * torch.linspace(0.5, 1.5, len(t))).sum() + (ent.sum() if grad_entropy else 0)
    loss.backward()
    return lp.detach(), ent.detach(), mean, top1, h.grad, w.grad


def _float64(h, w, t, autocast: bool, grad_entropy: bool = False):
    """The same quantities from full float64 logits of the operands the kernels multiply (bf16-rounded under
    autocast)."""
    if autocast:
        h, w = h.bfloat16(), w.bfloat16()
    h = h.double().requires_grad_()
    w = w.double().requires_grad_()
    logits = h @ w.t()
    logp = torch.log_softmax(logits, -1)
    lp = logp.gather(1, t[:, None])[:, 0]
    ent = -(logp.exp() * logp).sum(-1)
    loss = -(lp * torch.linspace(0.5, 1.5, len(t), dtype=torch.float64)).sum() + (ent.sum() if grad_entropy else 0)
    loss.backward()
    top1 = logits.argmax(1) == t
    return lp.detach(), ent.detach(), logits.mean(1).detach(), top1, h.grad, w.grad


def _rel(a, b):
    return float((a.double() - b).norm() / b.norm())


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("token_chunk", [4096, 128])  # one pass over the rows, or several
def test_cpu_log_probs_match_trl_and_float64(monkeypatch, autocast, token_chunk):
    from trl.kernels import ChunkedLogProbFunction

    monkeypatch.setattr(lm_head, "TOKEN_CHUNK", token_chunk)
    h, w, t = _inputs()
    ours = _run(lm_head.chunked_logprobs(ChunkedLogProbFunction).apply, h, w, t, autocast)
    trl = _run(ChunkedLogProbFunction.apply, h, w, t, autocast)
    exact = _float64(h, w, t, autocast)
    # against float64: float32 statistics over 5 vocabulary tiles; under autocast the logits themselves are rounded
    # to bf16 (both kernels), about 1e-2 on logits of a few units
    exact_tol = 5e-2 if autocast else 1e-4
    for k, name in enumerate(("log_probs", "entropy", "mean_logits")):
        assert torch.allclose(ours[k].double(), exact[k], atol=exact_tol, rtol=0), name
        assert torch.allclose(ours[k], trl[k], atol=1e-4, rtol=1e-5), name  # the same logits, the same statistics
    assert torch.equal(ours[3], trl[3])  # is_top1
    if not autocast:
        assert torch.equal(ours[3], exact[3])
    assert ours[3][:5].all()
    for k, name in ((4, "grad hidden"), (5, "grad weight")):
        # TRL rounds each gradient tile to bf16 under autocast; ours keeps float32 and is at least as close
        assert _rel(ours[k], exact[k]) < (5e-3 if autocast else 1e-5), name  # measured 1.9e-3 (TRL 2.5e-3) and 3e-7
        assert _rel(ours[k], exact[k]) <= _rel(trl[k], exact[k]) * 1.01 + 1e-7, name


def test_entropy_gradient_and_fallback():
    from trl.kernels import ChunkedLogProbFunction

    h, w, t = _inputs(n=64, vocab=3000, seed=1)
    ours = _run(lm_head.chunked_logprobs(ChunkedLogProbFunction).apply, h, w, t, False, grad_entropy=True)
    exact = _float64(h, w, t, False, grad_entropy=True)
    assert _rel(ours[4], exact[4]) < 1e-5 and _rel(ours[5], exact[5]) < 1e-5

    calls = []

    class Original:
        @staticmethod
        def apply(*args):
            calls.append(args)
            return "trl"

    fn = lm_head.chunked_logprobs(Original).apply
    bias = torch.zeros(3000)
    assert fn(h, w, bias, t, 1.0, 1024, None, 1.0, OUTPUTS) == "trl"  # a bias: TRL's function
    assert fn(h, w, None, t, 0.7, 1024, None, 1.0, OUTPUTS) == "trl"  # a temperature
    assert fn(h, w, None, t, 1.0, 1024, 30.0, 1.0, OUTPUTS) == "trl"  # softcapping
    assert fn(h, w, None, t, 1.0, 1024, None, 1.0, OUTPUTS + ("log_sum_sq_probs",)) == "trl"
    assert len(calls) == 4
    assert fn(h, w, None, t, 1.0, 1024, None, 1.0, OUTPUTS)[0].shape == (64,)  # ours
    assert len(calls) == 4
