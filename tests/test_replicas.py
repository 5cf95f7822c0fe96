"""Data-parallel sampling (backend.replicas): 2 engine processes of 1 core each give the responses of 1 engine of
1 core, through the normal stage (issue 14)."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, run_cli, wait_for_lines
from harness.config import load_config
from harness.io import read_jsonl

pytestmark = pytest.mark.model


def _sample(tmp_path, *extra):
    from harness.pipeline import Pipeline

    cfg, _ = load_config(None, ["run_name=dp", "seed=5", "languages=[en,es]", "iterations=1", "prompts.limit=3",
                                "models.policy=smollm2-135m-instruct", "sample.n=2", "sample.max_tokens=8",
                                "sample.chunk=1", "backend.threads=1", *extra])
    pipe = Pipeline(cfg, tmp_path)
    task = next(t for t in pipe.plan() if (t.iteration, t.stage) == (1, "sample"))
    pipe.execute(task)
    assert task.counts["replicas"] == cfg.backend.replicas
    return read_jsonl(pipe.layout.stage_dir(1, "sample") / "responses.jsonl"), task.hash


@pytest.mark.parametrize("backend", ["transformers", "vllm"])
def test_two_replicas_sample_what_one_samples(backend, tmp_path):
    one, h1 = _sample(tmp_path / "one", f"backend.sample={backend}")
    two, h2 = _sample(tmp_path / "two", f"backend.sample={backend}", "backend.replicas=2")
    assert h1 == h2  # the replica count is not part of what the stage computes
    assert len(one) == 6 and all(len(r["responses"]) == 2 for r in one)
    assert one == two


def test_a_killed_replica_loses_only_unfinished_chunks(tiny_config, tmp_path):
    import psutil

    cfg = tiny_config("sample: {n: 2, max_tokens: 24, chunk: 1}\nbackend: {replicas: 2, threads: 1}\n"
                      "models: {reference: smollm2-135m-instruct, policy: smollm2-135m-instruct}\n", name="dp.yaml")
    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(cfg), "--runs-dir", str(root)], cwd=REPO,
                            env=dict(os.environ, CI="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    partial = root / "tiny/iter_1/sample.partial/responses.jsonl"
    wait_for_lines(proc, partial, 2, 600)
    replicas = [c for c in psutil.Process(proc.pid).children(recursive=True)
                if "spawn_main" in " ".join(c.cmdline())]
    assert len(replicas) >= 2, [c.cmdline() for c in replicas]
    replicas[0].send_signal(signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    errors = [ln for ln in err.splitlines() if ln.startswith("harness: error:")]
    assert proc.returncode != 0 and len(errors) == 1 and "replica died" in errors[0], err[-3000:]
    kept = len(read_jsonl(partial))
    assert 2 <= kept < 8
    r = run_cli("run", str(cfg), "--runs-dir", str(root), "--debug", "iterations=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "iter_1/sample: resume" in r.stderr
    rows = read_jsonl(root / "tiny/iter_1/sample/responses.jsonl")
    assert len(rows) == 8 and all(len(x["responses"]) == 2 for x in rows)
