"""A prompt shared by several sequences runs once. The prompts (prefixes) run as one right-padded batch, where causal
attention alone keeps the padding out of the real positions. Their key/value cache is repeated once per
continuation row. The continuations run against it at their own positions, with the cache's padding slots masked.

Two users:
- reward scoring (``harness.backends.TransformersBackend._score_shared``): the n answers of a prompt;
- the DPO step on CPU (:func:`shared_prompt_forward`): the chosen and rejected answers of a pair.

Causal attention makes this exact: a prompt position's state depends only on the prompt, and a continuation sees
the same keys and values as in a whole forward. Only float rounding differs (different matrix shapes).
"""

from __future__ import annotations

from contextlib import contextmanager


def run_prefixed(body, prefix, plens, suffix, suffix_mask, of_row):
    """Hidden states ``(prefix_hidden [G, P, H], suffix_hidden [R, S, H])`` of the model body ``body``.

    - ``prefix`` [G, P]: token ids, row g real up to ``plens[g]``; what follows is padding or anything else.
    - ``suffix`` [R, S]: token ids; row r continues prefix ``of_row[r]`` at position ``plens[of_row[r]]``.
    - ``suffix_mask`` [R, S]: 1 on the suffix's real tokens (right-padded).

    Gradients flow through both passes when enabled."""
    import torch

    out = body(input_ids=prefix, use_cache=True)
    cache = out.past_key_values
    cache.reorder_cache(of_row)  # one copy of its prefix per suffix row
    P, S = prefix.shape[1], suffix.shape[1]
    arange_p = torch.arange(P, device=prefix.device)
    prefix_mask = (arange_p[None, :] < plens[:, None]).to(suffix_mask.dtype)
    positions = plens[of_row][:, None] + torch.arange(S, device=suffix.device)[None, :]
    hidden = body(input_ids=suffix, attention_mask=torch.cat([prefix_mask[of_row], suffix_mask], dim=1),
                  position_ids=positions, past_key_values=cache, use_cache=False).last_hidden_state
    return out.last_hidden_state, hidden


def pair_plan(input_ids, attention_mask, min_saving: float = 0.1):
    """How a DPO batch ``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]`` (right-padded, as TRL's collator
    builds it) shares its prompts: ``(plens [B], lens [2B])``, where ``plens[i]`` is the number of leading tokens
    that rows i and B+i have in common, at most the shorter row's length minus 1 (each row keeps a token to
    continue with). ``None`` when sharing does not apply (odd rows, a row that is not right-padded, a pair with
    nothing in common) or saves less than ``min_saving`` of the token slots a plain forward runs."""
    import torch

    if attention_mask is None or input_ids.dim() != 2 or input_ids.shape[0] % 2:
        return None
    N, L = input_ids.shape
    B = N // 2
    lens = attention_mask.sum(1)
    arange = torch.arange(L, device=input_ids.device)
    if not torch.equal(attention_mask.bool(), arange[None, :] < lens[:, None]):
        return None
    shorter = torch.minimum(lens[:B], lens[B:])
    same = (input_ids[:B] == input_ids[B:]) & (arange[None, :] < shorter[:, None])
    plens = torch.minimum(same.long().cumprod(1).sum(1), shorter - 1)
    if int(plens.min()) < 1:
        return None
    rows = torch.arange(N, device=input_ids.device) % B
    shared = B * int(plens.max()) + N * int((lens - plens[rows]).max())
    if shared > (1 - min_saving) * N * L:
        return None
    return plens, lens


def pair_forward(original, input_ids, attention_mask, plens, lens):
    """The body's output for a DPO batch with each pair's prompt run once (:func:`pair_plan`), in the layout of a
    plain forward: ``last_hidden_state`` [2B, L, H], zeros at the padding."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPast

    N, L = input_ids.shape
    B = N // 2
    of_row = torch.arange(N, device=input_ids.device) % B
    P = int(plens.max())
    rest = lens - plens[of_row]
    S = int(rest.max())
    take = plens[of_row][:, None] + torch.arange(S, device=input_ids.device)[None, :]
    suffix_mask = (torch.arange(S, device=input_ids.device)[None, :] < rest[:, None]).to(attention_mask.dtype)
    suffix = input_ids.gather(1, take.clamp(max=L - 1)) * suffix_mask
    hp, hs = run_prefixed(original, input_ids[:B, :P], plens, suffix, suffix_mask, of_row)
    H = hp.shape[-1]
    # each row's states: its prompt's from the prefix pass, its own from the suffix pass, zeros at the padding
    flat = torch.cat([hp.reshape(B * P, H), hs.reshape(N * S, H), hp.new_zeros(1, H)])
    t = torch.arange(L, device=input_ids.device)[None, :]
    p = plens[of_row][:, None]
    index = torch.where(t < p, of_row[:, None] * P + t,
                        torch.where(t < lens[:, None], B * P + torch.arange(N, device=input_ids.device)[:, None] * S
                                    + (t - p), B * P + N * S))
    return BaseModelOutputWithPast(last_hidden_state=flat[index])


@contextmanager
def shared_prompt_forward(model, enabled: bool = True):
    """While active, the model body runs each pair's prompt once for a DPO batch (TRL's collator puts the B chosen
    rows, then the B rejected rows, each prompt + answer, right-padded): the training step and TRL's reference pass
    then compute the prompt tokens once instead of twice, and the padding of the longest prompt + answer shrinks to
    that of the longest prompt and the longest answer. Any other call runs the body's own forward: generation,
    another layout, extra arguments, too little to save, a batch on a GPU (not measured there), and training under
    gradient checkpointing (the recomputed layers would write the cache twice). ``harness bench --train`` measures
    the step with and without it; tests/test_stages.py checks that log-probs, loss and gradients agree."""
    if not enabled:
        yield
        return
    body = getattr(model, model.base_model_prefix)
    original = body.forward

    def forward(input_ids=None, attention_mask=None, use_cache=None, **kwargs):
        plan = None
        if (input_ids is not None and input_ids.device.type == "cpu" and not use_cache and not kwargs
                and not (body.training and body.is_gradient_checkpointing)):
            plan = pair_plan(input_ids, attention_mask)
        if plan is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache, **kwargs)
        forward.shared += 1
        return pair_forward(original, input_ids, attention_mask, *plan)

    forward.shared = 0
    body.forward = forward
    try:
        yield forward
    finally:
        del body.forward
