"""Judges (registry kind ``judges``): pairwise preferences of a model's output over a reference output.

A preference is a float in [1, 2] as in AlpacaEval: 1 = the reference (output_1) is better, 2 = the model
(output_2) is better. Both judges use alpaca-eval's own pieces: the AlpacaEval 2 prompt
(``alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt``), its order randomisation (``RandomSwitchTwoColumnsProcessor``,
seeded by the instruction, seed 123 as in its annotators) and its ``logprob_parser`` (P(m) / (P(m) + P(M)) over
the first token's top-5 log-probs).

- ``local_logprob``: the prompt through a local Hugging Face model; the top-5 log-probs of its first answer token
  are read exactly as the API judge reads OpenAI's ``top_logprobs``. The demo's judge.
- ``local_logprob_multilingual``: the same with the paper's added sentence (METHOD.md section 6).
- ``weighted_alpaca_eval_gpt4_turbo`` (AlpacaEval 2's judge) and ``weighted_alpaca_eval_gpt4_turbo_multilingual``
  (the paper's): any OpenAI-compatible server, through alpaca-eval's ``openai_completions`` (max_tokens 1,
  temperature 1, logprobs, top_logprobs 5). Model name and base URL from the config (``eval.judge_model``,
  ``eval.judge_base_url``) or ``OPENAI_BASE_URL``; the key only from the environment variable named by
  ``eval.judge_api_key_env`` (never written anywhere). Concurrency ``eval.judge_concurrency``; the OpenAI client
  retries rate limits and server errors with exponential backoff.

Every judged pair is appended to an annotation cache keyed by (judge, instruction, output_1, output_2), so an
interrupted evaluation resumes and a rerun makes no judge call.

A local judge keeps the key/value caches of the prompts it has read (:class:`PromptCache`): a prompt continues from
the longest opening it shares with one read before (the template's opening; when the reference answer is shown
first, everything up to the model's own output). Inside :func:`judge_session` (a run's evaluations) the judge's
model and these caches outlive one evaluation, so the next model's evaluation loads nothing and reads only what
differs.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError
from harness.io import JsonlAppender
from harness.registry import register

MULTILINGUAL_SENTENCE = ("A good output should be in the same language as the instruction, except when the "
                         "instruction explicitly requests the output in a different language.")
SWITCH_SEED = 123  # alpaca_eval's SingleAnnotator default, passed to its processors
PROMPT_CACHE_BYTES = 1 << 30  # key/value caches a local judge keeps (SmolLM2-135M in float32: 46 KB per token)


def alpaca_eval_template(multilingual: bool) -> str:
    import alpaca_eval

    path = Path(alpaca_eval.__file__).parent / "evaluators_configs/alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt"
    text = path.read_text(encoding="utf-8")
    if multilingual:
        marker = "## Task\n\n"
        if marker not in text:
            raise HarnessError("cannot find the '## Task' paragraph in alpaca-eval's prompt", path)
        text = text.replace(marker, marker + MULTILINGUAL_SENTENCE + " ", 1)
    return text


def pair_key(judge_id: str, instruction: str, output_1: str, output_2: str) -> str:
    h = hashlib.sha256()
    for part in (judge_id, instruction, output_1, output_2):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


class AnnotationCache:
    """Append-only JSONL of judged pairs: {key, preference}."""

    def __init__(self, path: Path):
        self.file = JsonlAppender(path)
        self.values = {r["key"]: (float("nan") if r["preference"] is None else r["preference"])
                       for r in self.file.rows}
        self.calls = 0  # pairs judged (not served from the cache) in this process

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str) -> float | None:
        return self.values.get(key)

    def add(self, items: list[tuple[str, float]]) -> None:
        """A NaN preference (the judge's reply could not be parsed) is stored as null, and counted."""
        self.file.append({"key": k, "preference": None if math.isnan(p) else p} for k, p in items)
        self.values.update(items)
        self.calls += len(items)

    def close(self) -> None:
        self.file.close()


@dataclass
class Judge:
    name: str
    model: str
    multilingual: bool

    def identity(self) -> dict:
        return {"judge": self.name, "model": self.model, "multilingual": self.multilingual}

    @property
    def id(self) -> str:
        return hashlib.sha256(repr(sorted(self.identity().items())).encode()).hexdigest()[:16]

    def judge(self, instructions: Sequence[str], outputs_1: Sequence[str], outputs_2: Sequence[str],
              cache: AnnotationCache, progress_cb=None, batch: int = 4) -> list[float]:
        """Preferences (1..2) of outputs_2 over outputs_1; cached pairs are not judged again."""
        import pandas as pd
        from alpaca_eval.processors import RandomSwitchTwoColumnsProcessor

        keys = [pair_key(self.id, i, a, b) for i, a, b in zip(instructions, outputs_1, outputs_2)]
        todo = [j for j, k in enumerate(keys) if k not in cache]
        for start in range(0, len(todo), batch):
            idx = todo[start:start + batch]
            df = pd.DataFrame({"instruction": [instructions[j] for j in idx],
                               "output_1": [outputs_1[j] for j in idx], "output_2": [outputs_2[j] for j in idx]})
            proc = RandomSwitchTwoColumnsProcessor(
                two_columns_to_switch=["output_1", "output_2"], random_seed_columns=["instruction"],
                fn_replace_if_switch=lambda d: d.assign(preference=3 - d["preference"]) if "preference" in d else d,
                _switch_column="is_switched_outputs", seed=SWITCH_SEED)
            shown = proc.preprocess(df)
            shown["preference"] = self._preferences(shown)
            back = proc.postprocess(shown)
            cache.add([(keys[j], float(p)) for j, p in zip(idx, back["preference"].tolist())])
            if progress_cb:
                progress_cb(len(idx))
        return [cache.get(k) for k in keys]

    def preflight(self) -> None:
        """Check what judging will need without loading a model or calling a server (HarnessError if missing)."""

    def _preferences(self, df) -> list[float]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class PromptCache:
    """Key/value caches of prompts a local judge has read, keyed by their token ids, for later prompts that open the
    same way. At most ``max_bytes`` of tensors; the least recently used go first."""

    def __init__(self, max_bytes: int = PROMPT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple[int, ...], list] = OrderedDict()
        self.bytes = 0
        self.reused_tokens = 0  # tokens a prompt did not recompute, summed (what the cache saved)

    def longest(self, ids: list[int]) -> tuple[int, tuple[int, ...] | None]:
        """The longest opening of ``ids`` held here: its length and the entry that holds it."""
        best, key, ids = 0, None, tuple(ids)
        for k in self.entries:
            n = len(os.path.commonprefix([k, ids]))
            if n > best:
                best, key = n, k
        return best, key

    def restore(self, key: tuple[int, ...], n: int):
        """A fresh cache of the first ``n`` tokens of entry ``key`` (the entry itself is never changed)."""
        from transformers import DynamicCache

        self.entries.move_to_end(key)
        self.reused_tokens += n
        return DynamicCache([(k[..., :n, :], v[..., :n, :]) for k, v in self.entries[key]])

    def put(self, ids: list[int], cache) -> None:
        from transformers.cache_utils import DynamicLayer

        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            return  # a sliding-window or otherwise trimmed layer cannot be cut back and continued: whole forwards
        kv = [(layer.keys, layer.values) for layer in cache.layers]
        size = sum(k.nbytes + v.nbytes for k, v in kv)
        key = tuple(ids)
        if size > self.max_bytes or key in self.entries:
            return
        self.entries[key] = kv
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self.entries.popitem(last=False)
            self.bytes -= sum(k.nbytes + v.nbytes for k, v in old)


_session: dict | None = None  # (model, threads) -> (backend, PromptCache) while a judge_session lasts


@contextmanager
def judge_session():
    """Within this block a local judge's loaded model and its :class:`PromptCache` outlive one evaluation: the next
    evaluation with the same judge reuses both (a run evaluates its models one after another, against the same
    reference answers). Everything is released at the end of the block. Nested blocks join the outer one."""
    global _session
    if _session is not None:
        yield
        return
    _session = {}
    try:
        yield
    finally:
        held, _session = _session, None
        for backend, _ in held.values():
            backend.close()


class LocalLogprobJudge(Judge):
    """The AlpacaEval 2 weighted judge run through a local model (transformers backend)."""

    def __init__(self, name: str, model: str, multilingual: bool, threads: int | None = None):
        super().__init__(name, model, multilingual)
        self.threads = threads
        self._backend = None
        self._prompts: PromptCache | None = None

    @property
    def _session_key(self) -> tuple:
        return self.model, self.threads

    @property
    def backend(self):
        if self._backend is None:
            key = self._session_key
            if _session is not None and key in _session:
                self._backend, self._prompts = _session[key]
                return self._backend
            from harness.backends import TransformersBackend
            from harness.models import resolve_model

            from harness.timing import phase

            with phase("load"):
                self._backend = TransformersBackend(resolve_model(self.model), dtype="float32", threads=self.threads)
            self._prompts = PromptCache()
            if _session is not None:
                _session[key] = (self._backend, self._prompts)
        return self._backend

    def _preferences(self, df) -> list[float]:
        from alpaca_eval.completion_parsers import logprob_parser
        from alpaca_eval.utils import make_prompts, prompt_to_chatml

        be = self.backend
        prompts, _ = make_prompts(df, alpaca_eval_template(self.multilingual))
        ids = [be.tokenizer(be.tokenizer.apply_chat_template(prompt_to_chatml(p), add_generation_prompt=True,
                                                             tokenize=False), add_special_tokens=False)["input_ids"]
               for p in prompts]
        out = []
        for logp in self._next_token_logprobs(ids):
            top = logp.topk(5)
            top_logprobs = [{"token": be.tokenizer.decode([int(t)]), "logprob": float(v)}
                            for v, t in zip(top.values, top.indices)]
            completion = {"logprobs": {"content": [{"token": top_logprobs[0]["token"],
                                                    "logprob": top_logprobs[0]["logprob"],
                                                    "top_logprobs": top_logprobs}]}}
            pref = logprob_parser(completion, numerator_token="m", denominator_tokens=["m", "M"],
                                  is_binarize=False)[0]
            out.append(pref if pref is not None and not (isinstance(pref, float) and math.isnan(pref))
                       else float("nan"))
        return out

    def _next_token_logprobs(self, ids: list[list[int]], prompts: PromptCache | None = None):
        """log-softmax of the next token after each prompt, in float32. Each prompt continues from the key/value
        cache of the longest opening it shares with a prompt read before (``prompts``; the judge's own by default),
        which gives what a whole forward gives up to float rounding (tests/test_eval.py). The opening that all of
        ``ids`` share (the judge template's) is read first, once."""
        import torch

        model = self.backend.model
        prompts = self._prompts if prompts is None else prompts
        with torch.no_grad():
            if len(ids) > 1:
                shared = min(len(os.path.commonprefix(ids)), min(map(len, ids)) - 1)
                if shared > prompts.longest(ids[0][:shared])[0]:
                    head = ids[0][:shared]
                    prompts.put(head, model(input_ids=torch.tensor([head]), use_cache=True).past_key_values)
            for x in ids:
                n, key = prompts.longest(x)
                n = min(n, len(x) - 1)  # at least one token runs: its logits are the answer
                cache = prompts.restore(key, n) if n > 0 else None
                out = model(input_ids=torch.tensor([x[n:]]), past_key_values=cache, use_cache=True, logits_to_keep=1)
                prompts.put(x, out.past_key_values)
                yield torch.log_softmax(out.logits[0, -1].float(), dim=-1)

    def close(self) -> None:
        held = _session.get(self._session_key, (None,))[0] if _session is not None else None
        if self._backend is not None and self._backend is not held:  # the session closes what it holds
            self._backend.close()
        self._backend = self._prompts = None


class OpenAICompatJudge(Judge):
    """AlpacaEval 2's weighted judge against an OpenAI-compatible API, through alpaca-eval's own decoder."""

    def __init__(self, name: str, model: str, multilingual: bool, base_url: str | None = None,
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4, max_retries: int = 6):
        super().__init__(name, model, multilingual)
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries

    def identity(self) -> dict:
        return {**super().identity(), "base_url": self.base_url}

    def preflight(self) -> None:
        self._api_key()

    def _api_key(self) -> str:
        key = os.environ.get(self.api_key_env)
        if not key:
            raise HarnessError(f"judge '{self.name}' needs an API key in the environment variable {self.api_key_env} "
                               "(eval.judge_api_key_env; for a local vLLM server any non-empty value works)")
        return key

    def _preferences(self, df) -> list[float]:
        from alpaca_eval.completion_parsers import logprob_parser
        from alpaca_eval.decoders.openai import openai_completions
        from alpaca_eval.utils import make_prompts

        key = self._api_key()
        prompts, _ = make_prompts(df, alpaca_eval_template(self.multilingual))
        try:
            out = openai_completions(
                prompts, model_name=self.model, max_tokens=1, temperature=1, logprobs=True, top_logprobs=5,
                requires_chatml=True, num_procs=self.concurrency, openai_api_keys=[key],
                openai_api_base=self.base_url, client_config_path="/nonexistent/harness-uses-env",
                client_kwargs={"max_retries": self.max_retries})
        except Exception as e:  # the completed batches are already in the cache
            raise HarnessError(f"judge '{self.name}' ({self.model} at {self.base_url or 'api.openai.com'}) failed: "
                               f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; completed "
                               "judgements are cached, rerun to resume") from None
        prefs = []
        for completion in out["completions_all"]:
            try:
                p = logprob_parser(completion, numerator_token="m", denominator_tokens=["m", "M"],
                                   is_binarize=False)[0]
            except Exception:  # an empty or malformed reply: counted as unparsed
                p = float("nan")
            prefs.append(float("nan") if p is None else float(p))
        return prefs


def make_judge(cfg) -> Judge:
    """The run's judge from ``cfg.eval`` (local judges default to pi_ref's model, API judges to gpt-4-1106-preview)."""
    from harness.registry import get

    ec = cfg.eval
    local = ec.judge.startswith("local")
    model = ec.judge_model or (cfg.models.reference if local else "gpt-4-1106-preview")
    return get("judges", ec.judge)(model=model, threads=cfg.backend.threads, base_url=ec.judge_base_url,
                                   api_key_env=ec.judge_api_key_env, concurrency=ec.judge_concurrency)


@register("judges", "weighted_alpaca_eval_gpt4_turbo",
          "AlpacaEval 2's weighted judge on any OpenAI-compatible API (default model gpt-4-1106-preview)")
def weighted_alpaca_eval_gpt4_turbo(model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                                    concurrency: int = 4, **_) -> Judge:
    return OpenAICompatJudge("weighted_alpaca_eval_gpt4_turbo", model, False, base_url, api_key_env, concurrency)


@register("judges", "weighted_alpaca_eval_gpt4_turbo_multilingual",
          "the paper's judge: AlpacaEval 2's weighted judge plus the same-language sentence (OpenAI-compatible)")
def weighted_alpaca_eval_gpt4_turbo_multilingual(model: str, base_url: str | None = None,
                                                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4,
                                                 **_) -> Judge:
    return OpenAICompatJudge("weighted_alpaca_eval_gpt4_turbo_multilingual", model, True, base_url, api_key_env,
                             concurrency)


@register("judges", "local_logprob", "AlpacaEval 2 weighted prompt through a local model, read from its logprobs")
def local_logprob(model: str, threads: int | None = None, **_) -> Judge:
    return LocalLogprobJudge("local_logprob", model, False, threads)


@register("judges", "local_logprob_multilingual",
          "local_logprob with the paper's same-language sentence (METHOD.md section 6)")
def local_logprob_multilingual(model: str, threads: int | None = None, **_) -> Judge:
    return LocalLogprobJudge("local_logprob_multilingual", model, True, threads)
