"""The 13 X-AlpacaEval languages. Adding a language is one ``_add`` line (or a plugin calling ``registry.add``)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.registry import REGISTRY


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1
    name: str  # English name, as used in the reward prompt ("... using only {name} ...")
    native: str  # the language's own name

    def __str__(self) -> str:
        return self.code


def _add(code: str, name: str, native: str) -> None:
    REGISTRY.add("languages", code, Language(code, name, native), f"{name} ({native})")


_add("ar", "Arabic", "العربية")
_add("bn", "Bengali", "বাংলা")
_add("de", "German", "Deutsch")
_add("en", "English", "English")
_add("es", "Spanish", "Español")
_add("fr", "French", "Français")
_add("it", "Italian", "Italiano")
_add("ja", "Japanese", "日本語")
_add("ko", "Korean", "한국어")
_add("ru", "Russian", "Русский")
_add("sw", "Swahili", "Kiswahili")
_add("th", "Thai", "ไทย")
_add("zh", "Chinese", "中文")


def get_language(code: str) -> Language:
    return REGISTRY.get("languages", code)
