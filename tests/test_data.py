import gzip
import json

import pytest

from harness.data import load_english_prefs, load_prompts
from harness.errors import HarnessError


def _write(folder, lang, rows, raw=None):
    folder.mkdir(parents=True, exist_ok=True)
    text = raw if raw is not None else "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (folder / f"{lang}.jsonl").write_text(text, encoding="utf-8")


def test_shared_demo_subset_is_parallel(data_dir):
    ps = load_prompts("ultrafeedback-parallel/demo-subset", ["en", "es", "de", "zh"], limit=10)
    assert ps.n == 10
    ids = [p.id for p in ps.by_lang["en"]]
    for lang in ("es", "de", "zh"):
        assert [p.id for p in ps.by_lang[lang]] == ids
        assert all(p.prompt_en == e.prompt for p, e in zip(ps.by_lang[lang], ps.by_lang["en"]))


def test_gzipped_subsets_load(data_dir):
    assert load_prompts("ultrafeedback-parallel/random_1000", ["sw", "th"]).n == 1000


def test_upstream_row_format_takes_english_from_en_file(tmp_path):
    d = tmp_path / "p"
    _write(d, "en", [{"instruction_id": "a", "instruction": "Hi?"}, {"instruction_id": "b", "instruction": "Yo?"}])
    _write(d, "de", [{"instruction_id": "a", "instruction": "Hallo?"}, {"instruction_id": "b", "instruction": "Jo?"}])
    ps = load_prompts(str(d), ["de"])
    assert ps.by_lang["de"][1].prompt_en == "Yo?"


def test_misaligned_ids_name_file_and_row(tmp_path):
    d = tmp_path / "p"
    _write(d, "en", [{"id": "a", "prompt": "A"}, {"id": "b", "prompt": "B"}])
    _write(d, "es", [{"id": "a", "prompt": "A", "prompt_en": "A"}, {"id": "c", "prompt": "C", "prompt_en": "C"}])
    with pytest.raises(HarnessError) as e:
        load_prompts(str(d), ["en", "es"])
    assert str(e.value).startswith(f"{d / 'es.jsonl'}:2:") and "does not line up" in str(e.value)


def test_missing_instruction_names_row(tmp_path):
    d = tmp_path / "p"
    _write(d, "en", [{"id": "a", "prompt": "A"}, {"id": "b"}])
    with pytest.raises(HarnessError) as e:
        load_prompts(str(d), ["en"])
    assert str(e.value).startswith(f"{d / 'en.jsonl'}:2: missing or empty instruction")


def test_malformed_jsonl_names_row(tmp_path):
    d = tmp_path / "p"
    _write(d, "en", [], raw='{"id": "a", "prompt": "A"}\n{"id": "b", "prompt": \n')
    with pytest.raises(HarnessError) as e:
        load_prompts(str(d), ["en"])
    assert str(e.value).startswith(f"{d / 'en.jsonl'}:2: malformed JSON line")


def test_missing_language_file_lists_what_exists(tmp_path):
    d = tmp_path / "p"
    _write(d, "en", [{"id": "a", "prompt": "A"}])
    with pytest.raises(HarnessError, match="no prompt file for language 'fr'.*languages here: en"):
        load_prompts(str(d), ["fr"])


def test_no_data_dir_says_how_to_point_at_one(monkeypatch):
    monkeypatch.delenv("HARNESS_DATA")
    with pytest.raises(HarnessError, match="set HARNESS_DATA="):
        load_prompts("ultrafeedback-parallel/random_1000", ["en"])


def test_builtin_english_prefs():
    pairs, fp = load_english_prefs("builtin:english_prefs")
    assert 60 <= len(pairs) <= 70 and len({p.id for p in pairs}) == len(pairs)
    assert all(p.chosen != p.rejected for p in pairs)


def test_english_prefs_missing_field(tmp_path):
    p = tmp_path / "prefs.jsonl.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n")
        fh.write(json.dumps({"prompt": "q", "chosen": "a"}) + "\n")
    with pytest.raises(HarnessError, match=r"prefs.jsonl.gz:2: missing or empty field 'rejected'"):
        load_english_prefs(str(p))


def test_demo_subset_rule_reproduces_the_shared_subset(data_dir, tmp_path):
    from harness.data import DEMO_LANGS, derive_demo_subset

    out = derive_demo_subset(data_dir / "ultrafeedback-parallel" / "random_1000", tmp_path / "demo")
    for lang in DEMO_LANGS:
        mine = [json.loads(x) for x in (out / f"{lang}.jsonl").read_text().splitlines()]
        shared = [json.loads(x) for x in (data_dir / f"ultrafeedback-parallel/demo-subset/{lang}.jsonl")
                  .read_text().splitlines()]
        assert mine == shared


def test_offline_demo_without_local_copy_says_how(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_DATA")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setattr("harness.data.ICR_RAW", "http://127.0.0.1:9/{subset}/{lang}.jsonl")  # a closed port
    with pytest.raises(HarnessError, match="could not download .*point data_dir .*HARNESS_DATA"):
        load_prompts("ultrafeedback-parallel/demo-subset", ["en"])
