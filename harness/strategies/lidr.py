"""LIDR, Language Imbalance Driven Rewarding (Yang et al. 2024c), as METHOD.md section 8 describes the authors' code.

Stages of one iteration with the current model M_t (= pi_{k-1}):

``sample``
    Greedy answers (temperature 0, repetition penalty 1.1, ``sample.max_tokens``; the same chat template, no
    prefix): y_en to each English prompt and y_l to its parallel prompt in every target language l.
``translate``
    Self-translation with M_t, greedy, ``reward.translate_max_tokens``, the TRANS_INSTRUCTION prompt with the
    ``<translated>`` primer: t_{en->l} = y_en into l and t_{l->en} = y_l into English. Only the regex extracts a
    translation (LIDR's code): no closing tag gives "Translation Error".
``pairs``
    For each target l: the target pair (x_l, chosen t_{en->l}, rejected y_l) and the English pair (x_en, chosen
    y_en, rejected t_{l->en}); for a prompt that is itself a translation task (``TRANSLATION_TASK_IDS``: LIDR's
    Alpagasus list; none among the UltraFeedback prompts) the target pair's chosen is y_en untranslated. An item
    with a "Translation Error" in either direction is dropped and counted. As in the authors' code, the English
    file is rewritten per target, so only the **last** target's English pairs are kept (``summary.json`` counts
    the others as ``english_pairs_overwritten``).
``train``
    DPO + NLL as for ICR (``train.*``).

No reward model and no length control: ``pairs.*`` settings do not apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import HarnessError
from harness.languages import get_language
from harness.registry import register
from harness.strategies import TRANS_INSTRUCTION, TRANS_PRIMER, CrossLingual, StagePlan

REPETITION_PENALTY = 1.1
TRANSLATION_ERROR = "Translation Error"
TRANSLATION_TASK_IDS: frozenset[str] = frozenset()  # prompts that are translation tasks (LIDR: 88 Alpagasus ids)
_TRANSLATED = re.compile(r"<translated>(.*?)</translated>", re.DOTALL)


def extract_strict(text: str) -> str:
    """LIDR's extraction: the regex only; anything else is a translation error."""
    m = _TRANSLATED.search(text)
    return m.group(1).strip() if m else TRANSLATION_ERROR


@register("strategies", "lidr",
          "baseline LIDR: greedy en and target answers, self-translation both ways as chosen/rejected; no reward")
@dataclass(frozen=True)
class LIDR(CrossLingual):
    name: str = "lidr"
    stages: tuple[str, ...] = ("sample", "translate", "pairs", "train")

    def check(self, cfg) -> None:
        super().check(cfg)
        if "en" not in cfg.languages or len(cfg.languages) < 2:
            raise HarnessError("strategy lidr pairs English with target languages: languages must hold 'en' and at "
                               f"least one other (has {' '.join(cfg.languages)})", key="languages")

    def stage_settings(self, stage: str, plan: StagePlan) -> dict:
        from harness.config import to_dict

        ck, up = plan.cfg, plan.previous(stage, self.stages)
        if stage == "sample":
            return {**super().stage_settings(stage, plan), "decoding": {
                "temperature": 0.0, "repetition_penalty": REPETITION_PENALTY, "max_tokens": ck.sample.max_tokens}}
        if stage == "translate":
            return {**up, "model": plan.policy, "max_tokens": ck.reward.translate_max_tokens,
                    "backend": ck.backend.score, "backend_options": ck.backend.options,
                    "chunk": None, "extract": "regex only"}
        if stage == "pairs":
            return {**up, "languages": ck.languages, "translation_task_ids": sorted(TRANSLATION_TASK_IDS),
                    "english_pairs": "last target (authors' code)"}
        if stage == "train":
            return {**up, "model": plan.policy, "train": to_dict(ck.train), "seed": ck.seed}
        return super().stage_settings(stage, plan)

    def describe(self, stage: str, cfg, n_prompts: int) -> str | None:
        targets = sum(lang != "en" for lang in cfg.languages)
        if stage == "sample":
            n = n_prompts * len(cfg.languages)
            return f"{n} prompts x 1 greedy answer, <= {n * cfg.sample.max_tokens:,} new tokens"
        if stage == "translate":
            return (f"{2 * n_prompts * targets} greedy self-translations (en <-> {targets} languages), "
                    f"<= {cfg.reward.translate_max_tokens} tokens each")
        if stage == "pairs":
            return f"<= {2 * n_prompts * targets} pairs (target and English)"
        return None

    def stage_function(self, stage: str):
        return {"sample": greedy_sample, "translate": translate, "pairs": lidr_pairs}.get(stage) or \
            super().stage_function(stage)


def greedy_sample(ctx) -> dict:
    from harness.stages.sample import sample_responses

    return sample_responses(ctx, n=1, temperature=0.0, top_p=1.0, max_tokens=ctx.cfg.sample.max_tokens,
                            repetition_penalty=REPETITION_PENALTY)


def _answers(ctx) -> dict[tuple[str, str], dict]:
    from harness.io import read_jsonl

    src = ctx.upstream("sample") / "responses.jsonl"
    rows = {(r["lang"], r["id"]): r for r in read_jsonl(src)}
    if not rows:
        raise HarnessError("no sampled answers", src)
    return rows


def _work(ctx, rows) -> list[tuple[str, str]]:
    """(target language, prompt id) for every prompt answered in English and in the target."""
    return [(lang, pid) for lang in ctx.cfg.languages if lang != "en"
            for (lg, pid) in rows if lg == lang and ("en", pid) in rows]


def translate(ctx) -> dict:
    """translations.jsonl: per (target, id), y_en into the target and y_target into English; resumable per chunk."""
    from harness.backends import load_backend
    from harness.io import JsonlAppender, atomic_write_jsonl
    from harness.ui import progress

    cfg = ctx.cfg
    rows = _answers(ctx)
    work = _work(ctx, rows)
    out = JsonlAppender(ctx.out / "translations.jsonl")
    todo = out.pending_chunks(work, cfg.reward.chunk, lambda r: (r["lang"], r["id"]))
    if todo:
        with load_backend(cfg.backend.score, ctx.policy, threads=cfg.backend.threads, dtype=cfg.reward.dtype,
                          **cfg.backend.options) as be, progress() as bar:
            task = bar.add_task(f"iter {ctx.iteration} translate", total=len(work),
                                completed=len(work) - sum(map(len, todo)))
            for positions in todo:
                chunk = [work[j] for j in positions]
                prompts = []
                for lang, pid in chunk:
                    y_en, y_l = rows[("en", pid)]["responses"][0]["text"], rows[(lang, pid)]["responses"][0]["text"]
                    prompts.append(TRANS_INSTRUCTION.format(language=get_language(lang).name, text=y_en))
                    prompts.append(TRANS_INSTRUCTION.format(language="English", text=y_l))
                outs = be.generate([be.format_prompt(p) + TRANS_PRIMER for p in prompts], n=1, temperature=0.0,
                                   top_p=1.0, max_tokens=cfg.reward.translate_max_tokens, seeds=[0] * len(prompts))
                texts = [extract_strict(TRANS_PRIMER + o[0].text) for o in outs]
                out.append({"lang": lang, "id": pid, "en_to_target": texts[2 * i], "target_to_en": texts[2 * i + 1]}
                           for i, (lang, pid) in enumerate(chunk))
                bar.advance(task, len(chunk))
    out.close()
    order = {key: i for i, key in enumerate(work)}
    done = sorted(out.rows, key=lambda r: order[(r["lang"], r["id"])])
    atomic_write_jsonl(ctx.out / "translations.jsonl", done)
    errors = sum((r["en_to_target"] == TRANSLATION_ERROR) + (r["target_to_en"] == TRANSLATION_ERROR) for r in done)
    return {"items": len(done), "translations": 2 * len(done), "translation_errors": errors}


def lidr_pairs(ctx) -> dict:
    """pairs.jsonl (target and English pairs, in TRL's columns) and summary.json per language."""
    from harness.io import atomic_write_json, atomic_write_jsonl, read_jsonl

    rows = _answers(ctx)
    src = ctx.upstream("translate") / "translations.jsonl"
    trans = {(r["lang"], r["id"]): r for r in read_jsonl(src)}
    targets = [lang for lang in ctx.cfg.languages if lang != "en"]
    pairs, english, summary = [], [], {}

    def pair(lang, pid, prompt, chosen, rejected, kind, source):
        return {"lang": lang, "id": pid, "prompt": prompt, "chosen": chosen, "rejected": rejected, "kind": kind,
                "source_lang": source, "chosen_length": len(chosen), "rejected_length": len(rejected)}

    overwritten = 0
    for lang in targets:
        target, eng, dropped = [], [], 0
        for (lg, pid), t in trans.items():
            if lg != lang:
                continue
            if TRANSLATION_ERROR in (t["en_to_target"], t["target_to_en"]):
                dropped += 1
                continue
            x_en, x_l = rows[("en", pid)], rows[(lang, pid)]
            y_en, y_l = x_en["responses"][0]["text"], x_l["responses"][0]["text"]
            chosen = y_en if pid in TRANSLATION_TASK_IDS else t["en_to_target"]
            target.append(pair(lang, pid, x_l["prompt"], chosen, y_l, "target", lang))
            eng.append(pair("en", pid, x_en["prompt"], y_en, t["target_to_en"], "english", lang))
        pairs += target
        overwritten += len(english)
        english = eng  # the authors' quirk: the English file is rewritten per target, the last one survives
        summary[lang] = {"pairs": len(target), "dropped_translation_error": dropped, "length_unit": "chars",
                         "mean_chosen_length": _mean([p["chosen_length"] for p in target]),
                         "mean_rejected_length": _mean([p["rejected_length"] for p in target])}
    summary["en"] = {"pairs": len(english), "from_target": targets[-1] if targets else None,
                     "english_pairs_overwritten": overwritten, "length_unit": "chars",
                     "mean_chosen_length": _mean([p["chosen_length"] for p in english]),
                     "mean_rejected_length": _mean([p["rejected_length"] for p in english])}
    pairs = english + pairs
    if not pairs:
        raise HarnessError("no LIDR pairs: every item had a translation error", src)
    atomic_write_jsonl(ctx.out / "pairs.jsonl", pairs)
    atomic_write_json(ctx.out / "summary.json", summary)
    return {"pairs": len(pairs), "english_pairs": len(english),
            "dropped_translation_error": sum(s.get("dropped_translation_error", 0) for s in summary.values())}


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs)) if xs else 0.0
