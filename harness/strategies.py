"""Rewarding strategies: which prompt scores a response, and which languages get pairs.

The paper's three variants (METHOD.md section 3):

- ``cross_lingual`` (R_c, default): the target-language response is scored under the ENGLISH instruction, prefixed
  (for non-English) with "Please answer ... using only {Language} ...".
- ``multilingual`` (R_m): scored under the native instruction, the same prompt used for sampling.
- ``translate_en`` (R_t): the policy translates each response into English (greedy); the translation is scored under
  the English instruction; pairs still use the original responses. No English pairs.

Every strategy here runs the stages sample -> reward -> pairs -> train. Baselines with other stage lists (LIDR,
English-only DPO, KTO, self-rewarding) register here too and override ``stages``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Strategy:
    name: str = ""
    stages: tuple[str, ...] = ("sample", "reward", "pairs", "train")
    translate: bool = False  # score a self-translation into English instead of the response

    def pair_languages(self, languages: list[str]) -> list[str]:
        return list(languages)

    def reward_instruction(self, lang: str, prompt: str, prompt_en: str) -> str:
        raise NotImplementedError


@register("strategies", "cross_lingual", "ICR (R_c, default): score the response under the English instruction")
@dataclass(frozen=True)
class CrossLingual(Strategy):
    name: str = "cross_lingual"

    def reward_instruction(self, lang: str, prompt: str, prompt_en: str) -> str:
        if lang == "en":
            return prompt_en
        return LANG_PREFIX.format(language=get_language(lang).name) + prompt_en


@register("strategies", "multilingual", "R_m: score the response under its own native-language instruction")
@dataclass(frozen=True)
class Multilingual(Strategy):
    name: str = "multilingual"

    def reward_instruction(self, lang: str, prompt: str, prompt_en: str) -> str:
        return prompt


@register("strategies", "translate_en",
          "R_t: policy self-translates responses to English, scored under the English instruction; no en pairs")
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
