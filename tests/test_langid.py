import gzip
import json

import pytest

from harness import langid

# Measured accuracy (against the file's language, see harness/langid.py) minus 0.01.
REF_MIN = {"bn": .968, "de": .956, "en": .983, "es": .957, "fr": .961, "ru": .958, "sw": .955, "th": .935,
           "zh": .920}
# Short texts: these also fail if the detector falls back to lingua's low-accuracy mode (en .966, it .963).
INSTR_MIN = {"ar": .986, "bn": .990, "de": .983, "en": .981, "es": .982, "fr": .982, "it": .982, "ja": .987,
             "ko": .980, "ru": .986, "sw": .976, "th": .981, "zh": .985}


def _references(data_dir, lang):
    path = data_dir / "x-alpacaeval" / "references" / "gpt-4-turbo-2024-04-09" / f"{lang}.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [row["output"] for row in json.load(f)]


def _instructions(data_dir, lang):
    with open(data_dir / "x-alpacaeval" / "instructions" / f"{lang}.json", encoding="utf-8") as f:
        return [row["instruction"] for row in json.load(f)]


def test_langs_match_the_language_registry():
    from harness.registry import REGISTRY

    assert set(langid.LANGS) == set(REGISTRY.load().names("languages"))


@pytest.mark.parametrize("lang", sorted(REF_MIN))
def test_reference_accuracy(data_dir, lang):
    texts = _references(data_dir, lang)
    assert len(texts) == 805
    res = langid.on_target_rate(texts, lang)
    assert res["rate"] >= REF_MIN[lang], res


def test_instruction_accuracy(data_dir):
    low = {}
    for lang, minimum in INSTR_MIN.items():
        rate = langid.on_target_rate(_instructions(data_dir, lang), lang)["rate"]
        if rate < minimum:
            low[lang] = rate
    assert not low, f"below threshold: {low}"


def test_english_answer_to_german_instruction_is_off_target(data_dir):
    english = _references(data_dir, "en")[:50]
    german = _references(data_dir, "de")[:50]
    off = langid.on_target_rate(english, "de")
    assert off["rate"] == 0.0 and off["counts"] == {"en": 50}
    assert langid.on_target_rate(german, "de")["rate"] == 1.0
    mixed = langid.on_target_rate(german[:3] + english[:1], "de")
    assert mixed["rate"] == 0.75 and mixed["counts"] == {"de": 3, "en": 1}


def test_undetectable_texts_give_none():
    assert langid.detect(["", "   ", "12345", "3.14 + 2 = 5.14", "😌🎉"]) == [None] * 5
    assert langid.detect([]) == []


def test_code_blocks_do_not_decide_the_language():
    code = """```python
def total(items):
    # Return the total price of all items in the shopping cart, including the tax.
    # Items without a price are skipped, and a warning is logged for each of them.
    # Discounts are applied before the tax, as required by the accounting team.
    result = 0
    for item in items:
        if item.price is None:
            log.warning("item %s has no price and will be ignored", item.name)
            continue
        result += (item.price - item.discount) * (1 + item.tax_rate)
    return round(result, 2)
```"""
    german = "Hier ist eine Funktion, die den Gesamtpreis aller Artikel im Warenkorb berechnet:\n\n"
    assert langid.detector().detect_language_of(german + code).iso_code_639_1.name == "EN"  # raw text says English
    assert langid.detect([german + code, code]) == ["de", "en"]  # a code-only answer keeps its code's language


def test_on_target_rate_counts():
    texts = ["Das ist ein ganz normaler deutscher Satz über das Wetter von morgen.",
             "This is a perfectly ordinary English sentence about tomorrow's weather.",
             "Ceci est une phrase française tout à fait ordinaire sur la météo de demain.",
             "Das Wetter wird morgen sonnig und warm, sagt der Wetterbericht.",
             "", "42"]
    res = langid.on_target_rate(texts, "de")
    assert res == {"lang": "de", "rate": 2 / 6, "n": 6, "n_undetected": 2, "counts": {"de": 2, "en": 1, "fr": 1}}
    assert langid.on_target_rate([], "de")["rate"] is None
    with pytest.raises(ValueError):
        langid.on_target_rate(texts, "pt")


def test_detector_is_built_once():
    assert langid.detector() is langid.detector()
