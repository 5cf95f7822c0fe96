import sys
import textwrap

import pytest

from harness.errors import HarnessError
from harness.registry import KINDS, REGISTRY, Registry


def test_builtins_are_registered():
    assert set(REGISTRY.names("languages")) == set("ar bn de en es fr it ja ko ru sw th zh".split())
    assert {"cross_lingual", "multilingual", "translate_en"} <= set(REGISTRY.names("strategies"))
    assert {"transformers", "vllm"} <= set(REGISTRY.names("backends"))
    assert {"local_logprob", "local_logprob_multilingual", "weighted_alpaca_eval_gpt4_turbo",
            "weighted_alpaca_eval_gpt4_turbo_multilingual"} <= set(REGISTRY.names("judges"))
    assert {"smollm2-135m-instruct", "llama-3-8b-sft", "llama-3-8b-sft-dpo"} <= set(REGISTRY.names("models"))
    for kind in KINDS:
        for e in REGISTRY.entries(kind):
            assert e.description, f"{kind}/{e.name} has no description"


def test_language_names():
    de = REGISTRY.get("languages", "de")
    assert (de.name, de.native) == ("German", "Deutsch")


def test_unknown_name_suggests_and_lists():
    with pytest.raises(HarnessError) as e:
        REGISTRY.get("strategies", "crosslingual")
    msg = str(e.value)
    assert "did you mean 'cross_lingual'" in msg and "available: " in msg and "harness ls strategies" in msg


def test_duplicate_registration_fails():
    reg = Registry().load()  # not the shared REGISTRY: before its lazy load, this "de" would make the built-in clash
    with pytest.raises(HarnessError, match="registered twice"):
        reg.add("languages", "de", object(), "again")


def _install_plugin(tmp_path, monkeypatch, body: str) -> None:
    """A real distribution on sys.path with a harness.plugins entry point."""
    (tmp_path / "myplug.py").write_text(textwrap.dedent(body))
    dist = tmp_path / "myplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[harness.plugins]\nmyplug = myplug:register\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myplug", None)


def test_entry_point_plugin_adds_components(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, """
        from harness.languages import Language
        def register(reg):
            reg.add("languages", "xh", Language("xh", "Xhosa", "isiXhosa"), "Xhosa (isiXhosa)")
    """)
    reg = Registry().load()
    assert reg.get("languages", "xh").name == "Xhosa"
    assert next(e for e in reg.entries("languages") if e.name == "xh").origin == "myplug"


def test_broken_plugin_is_recorded_not_fatal(tmp_path, monkeypatch):
    _install_plugin(tmp_path, monkeypatch, "raise RuntimeError('boom')\n")
    reg = Registry().load()
    assert "de" in reg.names("languages")
    assert any("boom" in err for err in reg.broken_plugins.values())
