"""Strategies: how one iteration turns pi_{k-1} into pi_k. The pipeline plans every iteration from the strategy.

A strategy says (see :class:`Strategy`):

- ``stages``: which stages an iteration runs, in order (the last one trains and writes ``model/``);
- ``stage_settings(stage, plan)``: what that stage's hash covers (its config slice, the models and data it uses,
  the hash of the stage before it), so a changed setting reruns exactly what it affects;
- ``stage_function(stage)``: what the stage computes (default: ``harness.stages.<stage>.run``);
- ``sample_languages`` / ``pair_languages``, ``reward_instruction``: the knobs of the built-in stages.

A new strategy is a subclass registered with ``@register("strategies", name, one line)`` in its own module, or
through a plugin (entry-point group ``harness.plugins``): no pipeline edit. The one line is what ``harness ls
strategies`` shows: what differs from the paper's method.

The paper's three rewarding variants (METHOD.md section 3) run sample -> reward -> pairs -> train:

- ``cross_lingual`` (R_c, default): the target-language response is scored under the ENGLISH instruction, prefixed
  (for non-English) with "Please answer ... using only {Language} ...".
- ``multilingual`` (R_m): scored under the native instruction, the same prompt used for sampling.
- ``translate_en`` (R_t): the policy translates each response into English (greedy); the translation is scored under
  the English instruction; pairs still use the original responses. No English pairs.

Baselines and alternatives, each in its own module: ``english_only`` (here: the same loop on English prompts and
pairs only), ``lidr`` (:mod:`harness.strategies.lidr`), ``self_rewarding``
(:mod:`harness.strategies.self_rewarding`). ``train.objective: kto`` (the train stage) applies to any of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from harness.errors import HarnessError
from harness.languages import get_language
from harness.registry import register

LANG_PREFIX = ("Please answer the following instruction using only {language}, unless explicitly instructed to "
               "respond in a different language.\n\n")
TRANS_INSTRUCTION = ("Please translate the following sentences into {language}. The input sentences are wrapped by "
                     "<sentence> and </sentence>:\n\n<sentence>\n{text}\n</sentence>\n\nThe translated result should "
                     "be wrapped by <translated> and </translated>.\n")
TRANS_PRIMER = "<translated>\n"
_TRANSLATED = re.compile(r"<translated>(.*?)</translated>", re.DOTALL)


def extract_translation(text: str) -> str:
    """METHOD.md section 3 (R_t): regex first, then strip a dangling tag, then the literal "Translation Error"."""
    m = _TRANSLATED.search(text)
    if m:
        return m.group(1).strip()
    rest = text.strip()
    if rest.startswith("<translated>"):
        rest = rest[len("<translated>"):]
    if rest.endswith("</translated>"):
        rest = rest[: -len("</translated>")]
    rest = rest.strip()
    return rest if rest else "Translation Error"


@dataclass
class StagePlan:
    """What a strategy sees when it says what a stage's hash covers; built by the pipeline for each iteration."""

    cfg: Any  # RunConfig of this iteration (per_iteration applied)
    iteration: int
    policy: dict  # identity of pi_{k-1}: the sampler, the reward policy, the model trained
    reference: dict  # identity of the reward reference (pi_ref, or pi_{k-2} with reward.reference: previous)
    prompts: Callable[[], str]  # fingerprint of the iteration's prompts (a call: it may read the prompt files)
    upstream: dict[str, str] = field(default_factory=dict)  # hash of each earlier stage of this iteration

    def previous(self, stage: str, stages: tuple[str, ...]) -> dict:
        """{"upstream": hash of the stage before ``stage``}, or {} for the first stage."""
        i = stages.index(stage)
        return {"upstream": self.upstream[stages[i - 1]]} if i else {}


@dataclass(frozen=True)
class Strategy:
    name: str = ""
    stages: tuple[str, ...] = ("sample", "reward", "pairs", "train")
    translate: bool = False  # score a self-translation into English instead of the response
    OPTIONS: ClassVar[dict] = {}  # the strategy's own settings (``strategy_options``) and their defaults

    def describe(self, stage: str, cfg, n_prompts: int) -> str | None:
        """The work of ``stage`` in ``--dry-run``'s plan (None: the built-in stages' description)."""
        return None

    def options(self, cfg) -> dict:
        """``strategy_options`` over the defaults; an unknown key is a one-line error naming the nearest one."""
        import difflib

        given = dict(cfg.strategy_options or {})
        for key in given:
            if key not in self.OPTIONS:
                close = difflib.get_close_matches(key, list(self.OPTIONS), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                have = ", ".join(self.OPTIONS) or "none"
                raise HarnessError(f"strategy_options.{key}: strategy '{self.name}' has no such option{hint} "
                                   f"(its options: {have})", key=f"strategy_options.{key}")
        return {**self.OPTIONS, **given}

    # -- the knobs of the built-in stages --------------------------------------------------------------------------
    def sample_languages(self, languages: list[str]) -> list[str]:
        """Languages whose prompts the sample stage answers."""
        return list(languages)

    def pair_languages(self, languages: list[str]) -> list[str]:
        """Languages that get preference pairs."""
        return list(languages)

    def reward_instruction(self, lang: str, prompt: str, prompt_en: str) -> str:
        raise NotImplementedError

    # -- planning ----------------------------------------------------------------------------------------------------
    def check(self, cfg) -> None:
        """Config problems of this strategy, raised as HarnessError when the run is planned."""
        self.options(cfg)
        if not self.stages or self.stages[-1] != "train":
            raise HarnessError(f"strategy '{self.name}': its last stage must be 'train' (it writes pi_k), not "
                               f"{self.stages[-1] if self.stages else 'nothing'}", key="strategy")

    def stage_settings(self, stage: str, plan: StagePlan) -> dict:
        """What the hash of ``stage`` covers. The built-in stages' settings; a strategy with other stages (or stages
        that read other settings) overrides this, usually extending ``super().stage_settings``."""
        from harness.config import to_dict

        ck, up = plan.cfg, plan.previous(stage, self.stages)
        if stage == "sample":
            sample = to_dict(ck.sample)
            if sample["dtype"] is None:  # the model's own dtype, as before the setting existed: hashes stay
                del sample["dtype"]
            return {**up, "model": plan.policy, "prompts": plan.prompts(), "prompts_cfg": to_dict(ck.prompts),
                    "languages": self.sample_languages(ck.languages), "sample": sample,
                    "backend": ck.backend.sample, "backend_options": ck.backend.options, "seed": ck.seed}
        if stage == "reward":
            return {**up, "policy": plan.policy, "reference": plan.reference, "strategy": ck.strategy,
                    "reward": {**to_dict(ck.reward), "chunk": None}, "backend": ck.backend.score,
                    "backend_options": ck.backend.options}
        if stage == "pairs":
            return {**up, "pairs": to_dict(ck.pairs), "languages": self.pair_languages(ck.languages)}
        if stage == "train":
            return {**up, "model": plan.policy, "train": to_dict(ck.train), "seed": ck.seed}
        raise HarnessError(f"strategy '{self.name}' runs a stage '{stage}' without saying what its hash covers: "
                           "override stage_settings()", key="strategy")

    def stage_function(self, stage: str) -> Callable:
        """What ``stage`` computes: ``run(ctx: StageContext) -> dict`` (counts for its completion record)."""
        from harness.stages import stage_function

        return stage_function(stage)


@register("strategies", "cross_lingual",
          "the paper's method (ICR, R_c; default): each answer scored under the English instruction")
@dataclass(frozen=True)
class CrossLingual(Strategy):
    name: str = "cross_lingual"

    def reward_instruction(self, lang: str, prompt: str, prompt_en: str) -> str:
        if lang == "en":
            return prompt_en
        return LANG_PREFIX.format(language=get_language(lang).name) + prompt_en


@register("strategies", "multilingual",
          "R_m (paper's ablation): each answer scored under its own native-language instruction")
@dataclass(frozen=True)
class Multilingual(Strategy):
    name: str = "multilingual"

    def reward_instruction(self, lang: str, prompt: str, prompt_en: str) -> str:
        return prompt


@register("strategies", "translate_en",
          "R_t (paper's ablation): the policy's English self-translation is scored instead of the answer; no en pairs")
@dataclass(frozen=True)
class TranslateToEnglish(Strategy):
    name: str = "translate_en"
    translate: bool = True

    def pair_languages(self, languages: list[str]) -> list[str]:
        return [lang for lang in languages if lang != "en"]

    def reward_instruction(self, lang: str, prompt: str, prompt_en: str) -> str:
        return prompt_en

    @staticmethod
    def translation_instruction(text: str) -> str:
        return TRANS_INSTRUCTION.format(language="English", text=text)


@register("strategies", "english_only",
          "baseline: ICR on English prompts and pairs only (does the multilingual data matter?)")
@dataclass(frozen=True)
class EnglishOnly(CrossLingual):
    """The paper's loop restricted to English: only English prompts are sampled, scored and paired."""

    name: str = "english_only"

    def check(self, cfg) -> None:
        super().check(cfg)
        if "en" not in cfg.languages:
            raise HarnessError("strategy english_only samples English prompts: 'en' must be in languages "
                               f"(has {' '.join(cfg.languages)})", key="languages")

    def sample_languages(self, languages: list[str]) -> list[str]:
        return ["en"]

    def pair_languages(self, languages: list[str]) -> list[str]:
        return ["en"]
