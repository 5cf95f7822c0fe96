"""Evaluation: AlpacaEval-format outputs, the judge's order randomisation, cache resume, no secrets on disk."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, run_cli, wait_for_lines
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
    args = [sys.executable, "-m", "harness", "eval", "smollm2-135m-instruct", "--languages", "en", "--limit", "10",
            "--max-tokens", "8", "--runs-dir", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, CI="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    cache = wait_for_lines(proc, tmp_path / "eval-smollm2-135m-instruct" / "_cache" / "judge", 1, 300)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = cache.read_text().count("\n")
    assert 1 <= done_before < 10
    r = run_cli(*args[3:])
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{10 - done_before} judge calls" in r.stderr
    keys = [json.loads(x)["key"] for x in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 10


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
