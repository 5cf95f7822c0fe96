"""Evaluation: AlpacaEval-format outputs, the judge's order randomisation, cache resume, no secrets on disk."""

import csv
import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, assert_one_line_error, run_cli, shared_data, wait_for_lines
from harness.io import read_json
from harness.judges import AnnotationCache, Judge


class LongerIsBetter(Judge):
    """Pure-logic stand-in (no model): prefers the longer of the two outputs *as shown*."""

    def _preferences(self, df):
        self.shown = df.copy()
        return [1.0 if len(a) > len(b) else 2.0 for a, b in zip(df["output_1"], df["output_2"])]


def test_order_randomisation_is_undone(tmp_path):
    judge = LongerIsBetter("longer", "none", False)
    instructions = [f"instruction {i}" for i in range(40)]
    short, long = ["a"] * 40, ["a much longer answer"] * 40
    cache = AnnotationCache(tmp_path / "c.jsonl")
    prefs = judge.judge(instructions, short, long, cache, batch=40)
    assert prefs == [2.0] * 40  # the model's (longer) output wins whatever order it was shown in
    switched = judge.shown["is_switched_outputs"]
    assert 5 < switched.sum() < 35  # alpaca-eval's seeded switch did shuffle some pairs
    again = judge.judge(instructions, short, long, cache, batch=40)
    assert again == prefs and cache.calls == 40  # the second call was served from the cache


def test_unparsed_judgements_are_stored_as_null(tmp_path):
    cache = AnnotationCache(tmp_path / "c.jsonl")
    cache.add([("k1", float("nan")), ("k2", 1.5)])
    cache.close()
    lines = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert lines == [{"key": "k1", "preference": None}, {"key": "k2", "preference": 1.5}]
    again = AnnotationCache(tmp_path / "c.jsonl")
    assert "k1" in again and again.get("k2") == 1.5


def test_missing_reference_language_is_a_clear_error(tmp_path):
    r = run_cli("eval", "smollm2-135m-instruct", "--languages", "ko", "--limit", "2", "--runs-dir", str(tmp_path))
    assert r.returncode == 2
    assert "no 'gpt-4-turbo-2024-04-09' reference outputs for language 'ko'" in r.stderr
    assert "eval.references: {ko: MODEL or model_outputs.json}" in r.stderr


@pytest.mark.model
def test_eval_writes_alpacaeval_files_and_rerun_makes_no_judge_call(tmp_path):
    secret = "sk-test-" + "7" * 24
    env = {"OPENAI_API_KEY": secret, "COLUMNS": "200"}
    args = ["eval", "smollm2-135m-instruct", "--languages", "de", "es", "--limit", "3", "--max-tokens", "16",
            "--runs-dir", str(tmp_path)]
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "6 judge calls" in r.stderr
    out = tmp_path / "eval-smollm2-135m-instruct" / "eval"
    for lang in ("de", "es"):
        outputs = read_json(out / lang / "model_outputs.json")
        assert [set(o) for o in outputs] == [{"instruction", "output", "generator", "dataset", "id"}] * 3
        assert [o["id"] for o in outputs] == [0, 268, 536]
        ann = read_json(out / lang / "annotations.json")
        assert {a["generator_1"] for a in ann} == {"gpt-4-turbo-2024-04-09"}
        assert all(1.0 <= a["preference"] <= 2.0 for a in ann)
        m = read_json(out / lang / "metrics.json")
        for key in ("win_rate", "standard_error", "n_total", "length_controlled_winrate", "lc_source", "judge",
                    "reference", "on_target_rate", "detected_languages"):
            assert key in m
        assert m["lc_source"] == "estimated" and m["n_total"] == 3
        assert m["win_rate"] == pytest.approx(100 * sum(a["preference"] - 1 for a in ann) / 3)
    agg = read_json(out / "metrics.json")
    assert agg["average"]["win_rate"] == pytest.approx(
        sum(agg["per_language"][lang]["win_rate"] for lang in ("de", "es")) / 2)
    r = run_cli(*args, env=env)
    assert r.returncode == 0 and "0 judge calls" in r.stderr
    for path in (tmp_path).rglob("*"):  # the API key never lands in a file the harness writes
        if path.is_file():
            assert secret not in path.read_text(errors="ignore"), path


@pytest.mark.model
def test_killed_evaluation_resumes_without_repeating_judged_pairs(tmp_path):
    args = [sys.executable, "-m", "harness", "eval", "smollm2-135m-instruct", "--languages", "en", "--limit", "6",
            "--max-tokens", "8", "--runs-dir", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, CI="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    cache = wait_for_lines(proc, tmp_path / "eval-smollm2-135m-instruct" / "_cache" / "judge", 1, 300)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = cache.read_text().count("\n")
    assert 1 <= done_before < 6
    r = run_cli(*args[3:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{6 - done_before} judge calls" in r.stderr
    keys = [json.loads(x)["key"] for x in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 6


@pytest.mark.model
def test_language_without_shipped_reference_uses_a_named_model(tmp_path):
    r = run_cli("eval", "smollm2-135m-instruct", "--languages", "ko", "--limit", "2", "--max-tokens", "8",
                "--runs-dir", str(tmp_path), "eval.references={ko: smollm2-135m-instruct}")
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "eval-smollm2-135m-instruct" / "eval" / "ko"
    m = read_json(out / "metrics.json")
    assert m["reference"] == "smollm2-135m-instruct" and "generated by smollm2-135m-instruct" in m["reference_source"]
    refs = read_json(out / "reference_outputs.json")
    assert [x["id"] for x in refs] == [0, 402] and all(x["generator"] == "smollm2-135m-instruct" for x in refs)


# -- metrics of few rows, planning-time checks, unreadable files (no model) ------------------------------------------
def test_one_row_metrics_are_json_safe():
    """`harness eval --limit 1` judged, then crashed writing NaN into metrics.json (annotations without metrics).
    The metrics of one language, as evaluate_model computes them, on 1, 3 and 4 rows: JSON-safe (no NaN), with
    None where undefined and the reason for a missing LC."""
    from harness.evaluate import score_annotations_json
    from harness.io import dumps
    from harness.metrics import lc_inputs

    def annotations(prefs):
        return [{"instruction": f"q{i}", "output_1": "r" * (50 + 9 * i), "generator_1": "ref",
                 "output_2": "m" * (20 + i), "generator_2": "pi_0", "annotator": "local_logprob", "preference": p,
                 "dataset": "x", "index": i} for i, p in enumerate(prefs)]

    one = score_annotations_json(annotations([1.8]), lc_inputs("estimated"))
    dumps(one)  # allow_nan=False: raises on NaN
    assert one["win_rate"] == pytest.approx(80.0) and one["n_total"] == 1 and one["standard_error"] is None
    assert one["length_controlled_winrate"] is None and one["lc_standard_error"] is None
    assert "at least 2 judged rows, has 1" in one["lc_note"] and one["avg_length"] == 20
    three = score_annotations_json(annotations([1.8, None, 1.3, 1.6]), lc_inputs("minimal"))
    dumps(three)
    assert three["n_total"] == 3 and three["standard_error"] is not None and "5 folds" in three["lc_note"]
    four = score_annotations_json(annotations([1.8, None, 1.3, 1.6]), lc_inputs("estimated"))
    dumps(four)
    assert four["lc_note"] is None and 0 < four["length_controlled_winrate"] < 100
    assert four["lc_standard_error"] > 0 and four["lc_source"] == "estimated"
    assert dumps(score_annotations_json([], lc_inputs("estimated")))


def _eval_cfg(*overrides):
    from harness.config import load_config

    return load_config(None, ["eval.enabled=true", "eval.languages=[de]", *overrides])[0]


def test_preflight_finds_what_an_evaluation_lacks_without_loading_a_model(tmp_path, monkeypatch):
    import time

    from harness.errors import HarnessError
    from harness.evaluate import preflight
    from harness.metrics import ESTIMATED_GAMED_CSV

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HARNESS_TEST_KEY", "sk-anything")
    t0 = time.time()
    preflight(_eval_cfg())  # the default: local judge, estimated LC, shipped references
    preflight(_eval_cfg("eval.enabled=false", "eval.judge=weighted_alpaca_eval_gpt4_turbo",
                        "eval.judge_api_key_env=HARNESS_TEST_NO_KEY"))  # evaluation off: nothing to check
    preflight(_eval_cfg("eval.judge=weighted_alpaca_eval_gpt4_turbo", "eval.judge_api_key_env=HARNESS_TEST_KEY",
                        "eval.lc_source=official", f"eval.df_gamed={ESTIMATED_GAMED_CSV}"))
    preflight(_eval_cfg("eval.languages=[de,ko]", "eval.references={ko: smollm2-135m-instruct}"))
    bad = {
        "needs an API key in the environment variable HARNESS_TEST_NO_KEY": [
            "eval.judge=weighted_alpaca_eval_gpt4_turbo_multilingual", "eval.judge_api_key_env=HARNESS_TEST_NO_KEY"],
        "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache": ["eval.lc_source=official"],
        f"{tmp_path / 'nope.csv'}: df_gamed file does not exist": ["eval.lc_source=official",
                                                                   f"eval.df_gamed={tmp_path / 'nope.csv'}"],
        "no 'gpt-4-turbo-2024-04-09' reference outputs for language 'ja'": ["eval.languages=[de,ja]"],
        "eval.reference: reference outputs file does not exist": [f"eval.reference={tmp_path / 'x.json'}"],
        "eval.references.ko: unknown model 'nosuchmodel'": ["eval.languages=[ko]", "eval.references={ko: nosuchmodel}"],
    }
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty cache
    for message, overrides in bad.items():
        with pytest.raises(HarnessError) as e:
            preflight(_eval_cfg(*overrides))
        assert message in str(e.value) and "\n" not in str(e.value), overrides
    assert time.time() - t0 < 30  # no model, no network wait


def test_preflight_imports_no_model_library():
    code = ("import sys; from harness.config import load_config; from harness.evaluate import preflight\n"
            "preflight(load_config(None, ['eval.enabled=true', 'eval.languages=[de,es]'])[0])\n"
            "heavy = [m for m in ('torch', 'transformers', 'vllm', 'trl') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert "HEAVY []" in out.stdout


def test_unreadable_gzip_and_text_files_are_one_line(tmp_path):
    import gzip

    from harness.errors import HarnessError
    from harness.io import JsonlAppender, check_gzip, iter_jsonl, read_json

    fake = tmp_path / "rows.jsonl.gz"
    fake.write_text('{"a": 1}\n')
    with pytest.raises(HarnessError, match="rows.jsonl.gz: not a valid gzip file"):
        list(iter_jsonl(fake))
    with pytest.raises(HarnessError, match="rows.jsonl.gz: not a valid gzip file"):
        check_gzip(fake)
    with pytest.raises(HarnessError, match="cannot append to a compressed file"):
        JsonlAppender(fake)
    fake_json = tmp_path / "outputs.json.gz"
    fake_json.write_text("[]")
    with pytest.raises(HarnessError, match="outputs.json.gz: not a valid gzip file"):
        read_json(fake_json)
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(gzip.compress(b"[" + b'{"a": 1},' * 200 + b"{}]")[:40])
    with pytest.raises(HarnessError, match="cut.json.gz: not a valid gzip file"):
        read_json(cut)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"a": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(HarnessError, match="latin.jsonl: not UTF-8 text"):
        list(iter_jsonl(latin))
    with pytest.raises(HarnessError, match="latin.jsonl: not UTF-8 text"):
        JsonlAppender(latin)
    good = tmp_path / "good.json.gz"
    good.write_bytes(gzip.compress(b"[1]"))
    check_gzip(good)
    assert read_json(good) == [1]


@pytest.mark.model
def test_eval_limit_1_writes_null_metrics_and_takes_a_local_df_gamed(tmp_path):
    """`harness eval --limit 1` crashed after judging (NaN into metrics.json, annotations without metrics); with
    --lc-source official and a local --df-gamed (here a stand-in with df_gamed.csv's columns) it runs offline."""
    from harness.metrics import ESTIMATED_GAMED_CSV

    r = run_cli("eval", "smollm2-135m-instruct", "--languages", "de", "--limit", "1", "--max-tokens", "8",
                "--lc-source", "official", "--df-gamed", str(ESTIMATED_GAMED_CSV), "--runs-dir", str(tmp_path),
                env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf"), "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "INFO:root" not in r.stderr + r.stdout and "LC n/a for de" in r.stderr
    out = tmp_path / "eval-smollm2-135m-instruct" / "eval"
    assert len(read_json(out / "de" / "annotations.json")) == 1
    m = read_json(out / "de" / "metrics.json")
    assert m["n_total"] == 1 and m["win_rate"] is not None and m["standard_error"] is None
    assert m["length_controlled_winrate"] is None and "at least 2 judged rows" in m["lc_note"]
    assert m["lc_source"] == "official" and m["lc_origin"] == str(ESTIMATED_GAMED_CSV)
    assert read_json(out / "metrics.json")["average"]["length_controlled_winrate"] is None


def test_eval_of_a_folder_takes_a_chat_template_and_stop_strings(smollm2, tmp_path):
    """A checkpoint folder defaults to its tokenizer's template and EOS; --chat-template / --eot / --stop set them
    (the paper's checkpoints need the Llama-3 template and <|eot_id|>), and they reach the prompts."""
    from harness.models import format_prompt, resolve_model, with_template

    folder = resolve_model(str(smollm2))
    assert (folder.chat_template, folder.eot, folder.stop) == ("tokenizer", None, ())
    spec = with_template(folder, "llama3_no_system", "<|eot_id|>")
    assert spec.stop == ("<|eot_id|>",)
    assert format_prompt(spec, None, "Hi").startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    r = run_cli("eval", str(smollm2), "--languages", "en", "--limit", "1", "--max-tokens", "4", "--chat-template",
                "Question: {instruction}\nAnswer:", "--eot", "<|im_end|>", "--stop", "Question:", "<|im_end|>",
                "--runs-dir", str(tmp_path), "--run-name", "tmpl")
    assert r.returncode == 0, r.stderr[-2000:]
    model = read_json(tmp_path / "tmpl" / "run.json")["model"]
    assert (model["chat_template"], model["eot"], model["stop"]) == ("Question: {instruction}\nAnswer:", "<|im_end|>",
                                                                     ["Question:", "<|im_end|>"])


# -- outputs produced elsewhere ------------------------------------------------------------------------------------
def _given_outputs(folder, lang: str, model: str, with_ids: bool, drop: int | None = None, extra: bool = False):
    """An AlpacaEval model_outputs.json for ``lang`` made from the shipped reference answers (shortened)."""
    import gzip

    from harness.io import atomic_write_json

    refs = json.load(gzip.open(shared_data() / "x-alpacaeval" / "references" / "gpt-4-turbo-2024-04-09" /
                               f"{lang}.json.gz", "rt"))
    rows = [{"instruction": r["instruction"], "output": r["output"][:200], "generator": model,
             "dataset": r["dataset"], **({"id": r["id"]} if with_ids else {})} for r in refs if r["id"] != drop]
    if extra:
        rows.append({"instruction": "x", "output": "y", "generator": model, "dataset": "d", "id": 900})
    return atomic_write_json(folder / lang / model / "model_outputs.json", rows)


@pytest.mark.model
def test_eval_of_given_outputs_joins_the_leaderboard(tmp_path):
    """Outputs in AlpacaEval's format (the ICR authors' folder layout, no ids: matched by instruction) are judged
    and scored like generated ones and become a leaderboard row marked with their origin."""
    _given_outputs(tmp_path / "results", "de", "their-model", with_ids=False)
    _given_outputs(tmp_path / "results", "es", "their-model", with_ids=True)
    r = run_cli("eval", "their-model", "--outputs", str(tmp_path / "results"), "--limit", "3",
                "--runs-dir", str(tmp_path / "runs"), "--decoding", "temperature=0 max_tokens=2048")
    assert r.returncode == 0, r.stderr[-3000:]
    ev = tmp_path / "runs" / "eval-their-model" / "eval"
    for lang in ("de", "es"):
        ann = read_json(ev / lang / "annotations.json")
        assert len(ann) == 3 and all(a["generator_2"] == "their-model" for a in ann)
        assert [a["output_2"] for a in ann] == [a["output_1"][:200] for a in ann]  # matched to the right ids
    r = run_cli("leaderboard", str(tmp_path / "runs" / "eval-their-model"), "--out", str(tmp_path / "lb"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "lb" / "eval-their-model.csv", encoding="utf-8")))
    assert {(x["model"], x["origin"], x["lang"]) for x in rows} == {("their-model", "outputs", "de"),
                                                                    ("their-model", "outputs", "es")}
    assert rows[0]["decoding"] == "temperature=0 max_tokens=2048"


@pytest.mark.parametrize("case, message", [
    ("missing", "no output for X-AlpacaEval id 268"),
    ("extra", "id 900 is not an X-AlpacaEval id"),
    ("no-model", "no <lang>/other/model_outputs.json here (models found: m)"),
    ("language", "unknown language 'xx'"),
    ("decoding", "--decoding describes given outputs"),
])
def test_bad_given_outputs_are_one_line(tmp_path, case, message):
    folder = tmp_path / "results"
    _given_outputs(folder, "de", "m", with_ids=True, drop=268 if case == "missing" else None, extra=case == "extra")
    args = {"no-model": ["eval", "other", "--outputs", str(folder)],
            "language": ["eval", "m", "--outputs", f"xx={folder / 'de' / 'm' / 'model_outputs.json'}"],
            "decoding": ["eval", "smollm2-135m-instruct", "--decoding", "greedy"]}.get(
        case, ["eval", "m", "--outputs", str(folder), "--limit", "3"])
    r = run_cli(*args, "--runs-dir", str(tmp_path / "runs"))
    assert_one_line_error(r, message)
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("model_outputs.json"))


def test_unreachable_endpoint_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_cli("eval", "m", "--endpoint", f"http://127.0.0.1:{port}/v1", "--runs-dir", str(tmp_path))
    assert_one_line_error(r, f"--endpoint http://127.0.0.1:{port}/v1: no OpenAI-compatible server answers")
    assert not tmp_path.joinpath("eval-m").exists()


@pytest.mark.model
def test_local_judge_shares_the_template_opening_and_reads_what_a_whole_forward_reads():
    """The local judge runs the prompts' common opening once and continues each prompt from its cache: the next-token
    log-probs equal those of whole forwards (float32 rounding), and so do the preferences."""
    import pandas as pd

    from harness.judges import PromptCache, local_logprob

    judge = local_logprob(model="smollm2-135m-instruct", threads=2)
    df = pd.DataFrame({"instruction": ["Name a primary colour.", "¿Cuánto es 2 + 2?", "Give a synonym of big."],
                       "output_1": ["Red.", "4", "Large."], "output_2": ["Blue is one.", "Cuatro.", "Small."]})
    from alpaca_eval.utils import make_prompts, prompt_to_chatml

    from harness.judges import alpaca_eval_template

    tok = judge.backend.tokenizer
    prompts, _ = make_prompts(df, alpaca_eval_template(False))
    ids = [tok(tok.apply_chat_template(prompt_to_chatml(p), add_generation_prompt=True, tokenize=False),
               add_special_tokens=False)["input_ids"] for p in prompts]
    shared = os.path.commonprefix(ids)
    assert len(shared) > 100  # the template's opening
    cached = list(judge._next_token_logprobs(ids))
    whole = [next(judge._next_token_logprobs([x], PromptCache())) for x in ids]  # one prompt, nothing held: no sharing
    diff = max(float((a - b).abs().max()) for a, b in zip(cached, whole))
    print(f"\n{len(shared)} shared tokens of {[len(x) for x in ids]}; max |log-prob diff| {diff:.2e}")
    assert diff < 1e-4
    assert all(int(a.argmax()) == int(b.argmax()) for a, b in zip(cached, whole))
    prefs = judge._preferences(df)
    judge._next_token_logprobs = lambda xs: (next(type(judge)._next_token_logprobs(judge, [x], PromptCache()))
                                             for x in xs)
    assert prefs == pytest.approx(judge._preferences(df), abs=1e-4, nan_ok=True)
    judge.close()


@pytest.mark.model
def test_judge_session_keeps_the_model_and_reads_only_what_a_new_prompt_adds():
    """Two evaluations in one judge session (a run's models, judged against the same reference answers): the second
    loads no model, continues each prompt from the first evaluation's prompt for the same instruction (everything
    before the first output that differs: the reference answer too when it is shown first), and reads what whole
    forwards read. After the session the model is released."""
    import pandas as pd
    from alpaca_eval.utils import make_prompts, prompt_to_chatml

    from harness import judges
    from harness.judges import PromptCache, alpaca_eval_template, judge_session, local_logprob

    instructions = ["Name a primary colour.", "Give a synonym of big.", "What is 2 + 2?"]
    reference = ["Red is a primary colour, as are blue and yellow in the traditional model.", "Large.",
                 "2 + 2 = 4, the sum of two and two."]
    first = pd.DataFrame({"instruction": instructions, "output_1": reference, "output_2": ["Blue.", "Huge.", "4"]})
    second = first.assign(output_2=["Green?", "Small.", "Five."])

    def prompt_ids(df, tok):
        return [tok(tok.apply_chat_template(prompt_to_chatml(p), add_generation_prompt=True, tokenize=False),
                    add_special_tokens=False)["input_ids"] for p in make_prompts(df, alpaca_eval_template(False))[0]]

    with judge_session():
        a = local_logprob(model="smollm2-135m-instruct", threads=2)
        backend = a.backend
        ids_first = prompt_ids(first, backend.tokenizer)
        list(a._next_token_logprobs(ids_first))
        a.close()
        b = local_logprob(model="smollm2-135m-instruct", threads=2)
        assert b.backend is backend  # the session's model: nothing loaded again
        ids = prompt_ids(second, backend.tokenizer)
        before = b._prompts.reused_tokens
        cached = list(b._next_token_logprobs(ids))
        reused = b._prompts.reused_tokens - before
        whole = [next(b._next_token_logprobs([x], PromptCache())) for x in ids]
        b.close()
        assert judges._session[("smollm2-135m-instruct", 2)][0] is backend
    assert judges._session is None
    # each prompt continues from the same instruction's prompt of the first evaluation: what they share, exactly
    expected = [min(len(os.path.commonprefix([x, y])), len(x) - 1) for x, y in zip(ids, ids_first)]
    head = len(os.path.commonprefix(ids))
    assert reused == sum(expected) and all(e > head for e in expected), (reused, expected, head)
    diff = max(float((p - q).abs().max()) for p, q in zip(cached, whole))
    print(f"\nsecond evaluation: {reused} of {sum(map(len, ids))} prompt tokens reused (template opening {head}); "
          f"max |log-prob diff| {diff:.2e}")
    assert diff < 1e-4


def test_prompt_cache_restores_openings_and_refuses_trimmed_layers():
    """PromptCache: the longest shared opening, a fresh cache of exactly its tokens (the entry untouched), eviction of
    the least recently used past the byte limit, and no entry from a sliding-window layer (it cannot be cut back)."""
    import types

    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicSlidingWindowLayer

    from harness.judges import PromptCache

    def cache(n, fill):
        return DynamicCache([(torch.full((1, 1, n, 2), fill), torch.full((1, 1, n, 2), -fill))])

    held = PromptCache(max_bytes=2 * 2 * 5 * 2 * 4)  # two entries of 5 tokens (k and v, 2 dims, float32)
    held.put([1, 2, 3, 4, 5], cache(5, 1.0))
    held.put([1, 2, 9, 9, 9], cache(5, 2.0))
    assert held.longest([1, 2, 3, 7]) == (3, (1, 2, 3, 4, 5)) and held.longest([8]) == (0, None)
    restored = held.restore((1, 2, 3, 4, 5), 3)
    assert restored.get_seq_length() == 3 and float(restored.layers[0].keys.sum()) == 6.0
    assert held.entries[(1, 2, 3, 4, 5)][0][0].shape[2] == 5 and held.reused_tokens == 3  # the entry is whole
    held.put([7, 7, 7, 7, 7], cache(5, 3.0))  # over the limit: the least recently used (1, 2, 9, ...) goes
    assert list(held.entries) == [(1, 2, 3, 4, 5), (7, 7, 7, 7, 7)] and held.bytes == held.max_bytes
    sliding = types.SimpleNamespace(layers=[DynamicSlidingWindowLayer(sliding_window=4)])
    held.put([5, 5], sliding)
    assert (5, 5) not in held.entries
