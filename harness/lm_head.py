"""Per-token log-probs through the LM head on CPU, for TRL's fused head (see ``harness.stages.train.cpu_lm_head``).

TRL 1.16 projects hidden states onto the vocabulary in tiles and folds each tile into online log-sum-exp statistics
(``trl.kernels.ChunkedLogProbFunction``). On devices without Triton the fold is a chain of whole-tile torch ops: about
a dozen [tokens, tile] temporaries per tile in the forward pass and as many in the backward, the head's weight
converted to bf16 tile by tile twice per step, and a zeroed [vocab, hidden] gradient. :class:`CpuLogProbs` computes
the same quantities with the tile updated in place (two temporaries per tile), the weight converted once per call and
the weight gradient written tile by tile. Where it does not apply (a bias, a temperature, logit scaling or softcapping,
``log_sum_sq_probs``) :func:`chunked_logprobs` hands the call to TRL's function.

Numerics: the logits are the product of the bf16 operands under autocast (as TRL's), the statistics are float32, and
the gradient GEMMs run in float32 on those operands and the unrounded gradient (TRL rounds each gradient tile to bf16
first).
tests/test_stages.py compares both on the same inputs.
"""

from __future__ import annotations

import math

import torch

TOKEN_CHUNK = 4096  # rows of hidden states per pass: a [4096, tile] float32 temporary


class CpuLogProbs(torch.autograd.Function):
    """log p(target) per row of ``hidden`` under ``weight`` (no bias), with TRL's optional outputs entropy,
    mean_logits and is_top1 (None when not requested), in the order TRL returns them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int, outputs: tuple):
        ctx.set_materialize_grads(False)
        cdt = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
        w = weight.to(cdt)
        N, V = hidden.shape[0], weight.shape[0]
        want_entropy, want_mean, want_top1 = ("entropy" in outputs, "mean_logits" in outputs, "is_top1" in outputs)
        f32 = dict(dtype=torch.float32, device=hidden.device)
        log_z = torch.empty(N, **f32)
        target_logit = torch.empty(N, **f32)
        entropy = torch.empty(N, **f32) if want_entropy else None
        mean_logits = torch.empty(N, **f32) if want_mean else None
        is_top1 = torch.empty(N, dtype=torch.bool, device=hidden.device) if want_top1 else None
        for t0 in range(0, N, TOKEN_CHUNK):
            h = hidden[t0:t0 + TOKEN_CHUNK].to(cdt)
            tg = targets[t0:t0 + TOKEN_CHUNK]
            n = h.shape[0]
            m = torch.full((n,), -math.inf, **f32)  # running max
            s = torch.zeros(n, **f32)  # sum exp(z - m)
            sz = torch.zeros(n, **f32) if want_entropy else None  # sum exp(z - m) * (z - m)
            zsum = torch.zeros(n, **f32) if want_mean else None
            before = torch.full((n,), -math.inf, **f32) if want_top1 else None  # max logit left of the target
            for v0 in range(0, V, chunk_size):
                z = torch.mm(h, w[v0:v0 + chunk_size].t()).float()
                width = z.shape[1]
                local = tg - v0
                rows = ((local >= 0) & (local < width)).nonzero().squeeze(1)
                target_logit[t0 + rows] = z[rows, local[rows]]
                tile_max = z.amax(1)
                if want_mean:
                    zsum += z.sum(1)
                if want_top1:
                    before = torch.where(local >= width, torch.maximum(before, tile_max), before)
                    if len(rows):
                        left = torch.arange(width, device=z.device)[None, :] < local[rows, None]
                        before[rows] = torch.maximum(before[rows], z[rows].masked_fill(~left, -math.inf).amax(1))
                new_m = torch.maximum(m, tile_max)
                delta = (m - new_m).nan_to_num(neginf=0.0)  # 0 before the first tile (m = -inf, s = 0)
                rescale = torch.exp(m - new_m)
                z.sub_(new_m[:, None])  # z - m: the tile in place from here on
                if want_entropy:  # sz measured from the new maximum: rescale * (sz + delta * s) + this tile's
                    e = torch.exp(z)
                    es = e.sum(1)
                    sz.add_(delta * s).mul_(rescale).add_(e.mul_(z).sum(1))
                else:
                    es = z.exp_().sum(1)
                s.mul_(rescale).add_(es)
                m = new_m
            lz = m + torch.log(s)
            log_z[t0:t0 + n] = lz
            if want_entropy:
                entropy[t0:t0 + n] = torch.log(s) - sz / s  # log Z - E_p[z], with z measured from m
            if want_mean:
                mean_logits[t0:t0 + n] = zsum / V
            if want_top1:
                tl = target_logit[t0:t0 + n]
                is_top1[t0:t0 + n] = (tl >= m) & (tl > before)
        ctx.save_for_backward(hidden, weight, targets, log_z, entropy if entropy is not None else log_z)
        ctx.cdt, ctx.chunk_size = cdt, chunk_size
        ctx.mark_non_differentiable(*(x for x in (mean_logits, is_top1) if x is not None))
        return target_logit - log_z, entropy, None, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad_lp, grad_entropy, *_):
        hidden, weight, targets, log_z, entropy = ctx.saved_tensors
        cdt, chunk_size = ctx.cdt, ctx.chunk_size
        need_h, need_w = ctx.needs_input_grad[:2]
        if grad_lp is None and grad_entropy is None:
            return None, None, None, None, None
        w = weight.to(cdt)
        w32 = w.float()  # the gradient of the logits computed from the rounded operands (as autocast's matmuls)
        N, V = hidden.shape[0], weight.shape[0]
        grad_h = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.empty(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for t0 in range(0, N, TOKEN_CHUNK):
            h = hidden[t0:t0 + TOKEN_CHUNK].to(cdt)
            h32 = h.float()
            n = h.shape[0]
            tg = targets[t0:t0 + n]
            g = grad_lp[t0:t0 + n].float() if grad_lp is not None else None
            ge = grad_entropy[t0:t0 + n].float() if grad_entropy is not None else None
            lz = log_z[t0:t0 + n]
            for v0 in range(0, V, chunk_size):
                z = torch.mm(h, w[v0:v0 + chunk_size].t()).float()
                width = z.shape[1]
                grad = z.sub_(lz[:, None])  # log p, in place
                if ge is not None:  # d entropy / dz = -p (log p + H)
                    p = grad.exp()
                    ent_term = p * (grad + entropy[t0:t0 + n, None]) * (-ge[:, None])
                    grad = p
                else:
                    grad.exp_()  # p
                    ent_term = None
                if g is not None:  # d log p_target / dz = 1[target] - p
                    grad.mul_(-g[:, None])
                    local = tg - v0
                    rows = ((local >= 0) & (local < width)).nonzero().squeeze(1)
                    grad[rows, local[rows]] += g[rows]
                else:
                    grad.zero_()
                if ent_term is not None:
                    grad.add_(ent_term)
                if grad_h is not None:
                    if v0 == 0:
                        torch.mm(grad, w32[v0:v0 + width], out=grad_h[t0:t0 + n])
                    else:
                        grad_h[t0:t0 + n].addmm_(grad, w32[v0:v0 + width])
                if grad_w is not None:
                    if t0 == 0:
                        torch.mm(grad.t(), h32, out=grad_w[v0:v0 + width])
                    else:
                        grad_w[v0:v0 + width].addmm_(grad.t(), h32)
        return (grad_h.to(hidden.dtype) if grad_h is not None else None,
                grad_w.to(weight.dtype) if grad_w is not None else None, None, None, None)


def chunked_logprobs(original):
    """A stand-in for TRL's ``ChunkedLogProbFunction`` (its ``apply`` signature): :class:`CpuLogProbs` on CPU where
    it applies, ``original`` otherwise."""

    class Dispatch:
        @staticmethod
        def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None, logit_scale=1.0,
                  outputs=("log_probs",)):
            if (hidden.device.type != "cpu" or bias is not None or temperature != 1.0 or softcap is not None
                    or logit_scale != 1.0 or "log_sum_sq_probs" in outputs):
                return original.apply(hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale,
                                      outputs)
            return CpuLogProbs.apply(hidden, weight, targets, chunk_size, tuple(outputs))

    return Dispatch
