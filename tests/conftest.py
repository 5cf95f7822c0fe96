"""Shared fixtures. Runs and caches go to tmp paths; the shared data comes from $HARNESS_DATA (CI sets it to
../shared/data). Model tests use the real SmolLM2-135M-Instruct, provisioned once into $HARNESS_CACHE."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    value = os.environ.get("HARNESS_DATA") or str(REPO.parent / "shared" / "data")
    p = Path(value)
    if not p.is_dir():
        pytest.fail(f"tests need the shared data: set HARNESS_DATA (tried {p})")
    return p


def pytest_configure(config):
    """Under pytest-xdist (CI runs the model tests with -n 2) each worker runs on its own share of the cores, and so
    does every process a test starts (the affinity is inherited; torch's threads, vLLM's thread binding and the
    replicas' shares follow it): two model tests side by side then share the machine instead of fighting over it."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and count > 1 and hasattr(os, "sched_setaffinity"):
        from harness.backends import usable_cores  # light: no torch

        cores = usable_cores()
        if len(cores) >= count:
            os.sched_setaffinity(0, cores[int(worker.removeprefix("gw")) % count::count])


# Seconds each file's model tests took on one core of the 2-core AVX2 EPYC (CI's model pass, 2026-12-07). Only the
# order of the files comes from it: CI gives a worker the next file when it runs dry (--dist loadfile), so the long
# files go first and the short ones fill in at the end (xdist's own order, by number of tests, put the longest last
# and left one worker idle for minutes). A file missing here only runs later; nothing else depends on the figures.
MODEL_FILE_SECONDS = {"test_replicas.py": 451, "test_pipeline.py": 433, "test_strategies.py": 403,
                      "test_judge_server.py": 276, "test_accelerate.py": 269, "test_eval.py": 242,
                      "test_wiring.py": 177, "test_backends.py": 131, "test_bench.py": 122, "test_stages.py": 75}


def pytest_collection_modifyitems(config, items):
    """Longest files first (a stable sort: the tests of a file keep their order)."""
    items.sort(key=lambda item: -MODEL_FILE_SECONDS.get(item.path.name, 0))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data()


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_DATA", str(shared_data()))
    monkeypatch.setenv("HARNESS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("CI", os.environ.get("CI", "1"))


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from harness.models import provision_smollm2

    return provision_smollm2()


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 900
            ) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.setdefault("HARNESS_DATA", str(shared_data()))
    full_env.setdefault("CI", "1")
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd or REPO, timeout=timeout)


def wait_for_lines(proc: subprocess.Popen, where: Path, n: int, timeout: float) -> Path:
    """Poll until ``where`` (a JSONL file, or the first *.jsonl in a folder) has ``n`` lines while ``proc`` still
    runs: the moment to interrupt it mid-stage. Fails if the process ends first or the time runs out."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        files = [where] if where.suffix == ".jsonl" else (sorted(where.glob("*.jsonl")) if where.exists() else [])
        if files and files[0].exists() and files[0].read_text().count("\n") >= n:
            return files[0]
        if proc.poll() is not None:
            err = proc.stderr.read()[-2000:] if proc.stderr else ""
            pytest.fail(f"the process finished before it could be interrupted {err}")
        time.sleep(0.02)
    pytest.fail(f"{where} did not reach {n} lines in {timeout} s")


TINY = """
run_name: tiny
seed: 7
languages: [en, es]
iterations: 1
models: {{reference: smollm2-135m-instruct}}
prompts: {{source: ultrafeedback-parallel/demo-subset, limit: 4}}
sample: {{n: 3, max_tokens: 12, chunk: 4, temperature: 0.9}}  # 2 calls: a call per prompt took 17 of 66 s
reward: {{chunk: 1}}
train: {{batch_size: 4, max_length: 96, learning_rate: 1.0e-5, precision: fp32, warmup_ratio: 0}}  # stage 0 is one step:
# under a warm-up that step would run at learning rate 0, pi_0 would equal pi_ref and every reward would be 0
stage0: {{dataset: builtin:english_prefs, limit: 4}}
{extra}
"""


@pytest.fixture
def tiny_config(tmp_path):
    def make(extra: str = "", name: str = "tiny.yaml") -> Path:
        p = tmp_path / name
        p.write_text(TINY.format(extra=extra), encoding="utf-8")
        return p

    return make


def assert_one_line_error(r: subprocess.CompletedProcess, *must: str) -> str:
    """The bad-input contract: exit 2, exactly one non-empty line on stderr (``harness: error: ...``) that contains
    every string in ``must`` (the offending file, key or row), and no traceback anywhere."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, f"exit {r.returncode}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]
    assert len(lines) == 1, "expected one line on stderr, got:\n" + r.stderr[-3000:]
    assert lines[0].startswith("harness: error: "), lines[0]
    for m in must:
        assert m in lines[0], f"{m!r} not in: {lines[0]}"
    return lines[0]
