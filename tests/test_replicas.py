"""Data-parallel sampling and scoring (backend.replicas): 2 engine processes of 1 core each give the responses and
rewards of 1 engine of 1 core, through the normal stages (issue 14)."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import REPO, run_cli, wait_for_lines
from harness.config import load_config
from harness.io import read_jsonl

pytestmark = pytest.mark.model


def _run(tmp_path, stages, *extra):
    from harness.pipeline import Pipeline

    cfg, _ = load_config(None, ["run_name=dp", "seed=5", "languages=[en,es]", "iterations=1", "prompts.limit=2",
                                "models.policy=smollm2-135m-instruct", "sample.n=2", "sample.max_tokens=8",
                                "sample.chunk=1", "reward.chunk=2", "backend.threads=1", *extra])
    pipe = Pipeline(cfg, tmp_path)
    hashes = {}
    for task in pipe.plan():
        if task.iteration == 1 and task.stage in stages:
            pipe.execute(task)
            hashes[task.stage] = task.hash
    return pipe.layout.root / "iter_1", hashes


def _sample(tmp_path, *extra):
    root, hashes = _run(tmp_path, ("sample",), *extra)
    return read_jsonl(root / "sample" / "responses.jsonl"), hashes["sample"]


def test_two_vllm_replicas_sample_what_one_samples(tmp_path):
    """vLLM here; the transformers backend's samples are compared in the scoring test below."""
    one, h1 = _sample(tmp_path / "one", "backend.sample=vllm")
    two, h2 = _sample(tmp_path / "two", "backend.sample=vllm", "backend.replicas=2")
    assert h1 == h2  # the replica count is not part of what the stage computes
    assert len(one) == 4 and all(len(r["responses"]) == 2 for r in one)
    assert one == two


def test_two_replicas_score_what_one_scores(tmp_path, monkeypatch):
    """A policy that differs from the reference (SmolLM2 with its final norm scaled), so rewards are not zero."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models import resolve_model

    src = resolve_model("smollm2-135m-instruct").local_path()
    policy = tmp_path / "pi0"
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        model.model.norm.weight.mul_(1.1)
    model.save_pretrained(policy)
    AutoTokenizer.from_pretrained(src).save_pretrained(policy)
    import harness.replicas

    used = []
    real = harness.replicas.score_chunks
    monkeypatch.setattr(harness.replicas, "score_chunks",
                        lambda *a, **k: used.append((a[3], k.get("on"))) or real(*a, **k))
    # unrounded: rounding each sum to 4 decimals (the default) turns a 1e-7 difference into 1e-4 now and then
    over = [f"models.policy={policy}", "reward.round_decimals=null"]
    one, h1 = _run(tmp_path / "one", ("sample", "reward"), *over)
    assert used == []
    two, h2 = _run(tmp_path / "two", ("sample", "reward"), *over, "backend.replicas=2")
    assert h1 == h2 and used == [(2, "local")] * 2  # policy and reference, each over 2 replicas
    # the same on 2 Ray actors (a fresh local Ray instance here; on a cluster, actors on its nodes)
    import ray as ray_lib

    try:
        ray, h3 = _run(tmp_path / "ray", ("sample", "reward"), *over, "backend.replicas=2", "backend.replicas_on=ray")
    finally:
        ray_lib.shutdown()  # a run keeps Ray up until it exits; the rest of the suite does not need it
    assert h3 == h1 and used[2:] == [(2, "ray")] * 2
    a = read_jsonl(one / "reward/rewards.jsonl")
    assert len(a) == 4
    for other, what in ((two, "2 replicas"), (ray, "2 Ray replicas")):
        assert read_jsonl(one / "sample/responses.jsonl") == read_jsonl(other / "sample/responses.jsonl"), what
        b = read_jsonl(other / "reward/rewards.jsonl")
        rewards = [(x["reward"], y["reward"]) for r, q in zip(a, b) for x, y in zip(r["responses"], q["responses"])]
        assert len(rewards) == 8 and any(x != 0 for x, _ in rewards)
        worst = max(abs(x - y) for x, y in rewards)
        assert worst < 1e-4, (what, worst)
        print(f"\nrewards, {what} vs 1: max |diff| {worst:.1e} nats")


@pytest.mark.parametrize("on", ["local", "ray"])
def test_a_killed_replica_loses_only_unfinished_chunks(tiny_config, tmp_path, on):
    import psutil

    cfg = tiny_config(f"sample: {{n: 2, max_tokens: 24, chunk: 1}}\nbackend: {{replicas: 2, threads: 1, replicas_on: {on}}}\n"
                      "models: {reference: smollm2-135m-instruct, policy: smollm2-135m-instruct}\n", name="dp.yaml")
    root = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(cfg), "--runs-dir", str(root)], cwd=REPO,
                            env=dict(os.environ, CI="1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    partial = root / "tiny/iter_1/sample.partial/responses.jsonl"
    wait_for_lines(proc, partial, 2, 600)
    mark = "spawn_main" if on == "local" else "_Replica"  # a Ray actor's process title: ray::_Replica...
    replicas = [c for c in psutil.Process(proc.pid).children(recursive=True) if mark in " ".join(c.cmdline())]
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
    # the rerun stops after the resumed stage (--until): what follows it is not what this test is about
    r = run_cli("run", str(cfg), "--runs-dir", str(root), "--debug", "iterations=1", "--until", "1:sample",
                env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "iter_1/sample: resume" in r.stderr
    assert "stopped after 1:sample (--until): 3 stage(s) not run" in " ".join(r.stderr.split())
    assert not (root / "tiny/iter_1/reward").exists() and not (root / "tiny/leaderboard.md").exists()
    rows = read_jsonl(root / "tiny/iter_1/sample/responses.jsonl")
    assert len(rows) == 8 and all(len(x["responses"]) == 2 for x in rows)


def test_replicas_ask_for_what_the_machine_or_the_ray_cluster_has(monkeypatch):
    import importlib.util

    import torch

    from harness.errors import HarnessError
    from harness.replicas import local_gpus, ray_resources

    assert local_gpus(2, {}) == [[], []] or torch.cuda.is_available()
    # on a machine that shows GPUs 4-7: each local replica gets its own group of tensor_parallel_size of them
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert local_gpus(4, {}) == [["4"], ["5"], ["6"], ["7"]]
    assert local_gpus(2, {"tensor_parallel_size": 2}) == [["4", "5"], ["6", "7"]]
    with pytest.raises(HarnessError, match=r"3 replicas of 2 GPU\(s\) each need 6 GPUs; this machine shows 4"):
        local_gpus(3, {"tensor_parallel_size": 2})
    monkeypatch.undo()

    assert ray_resources(2, None, {}, {"CPU": 2.0}) == {"num_cpus": 1, "num_gpus": 0}
    assert ray_resources(2, None, {}, {"CPU": 64.0, "GPU": 8.0}) == {"num_cpus": 32, "num_gpus": 1}
    # tensor parallel engines: a GPU per rank
    assert ray_resources(4, 4, {"tensor_parallel_size": 2}, {"CPU": 64.0, "GPU": 8.0}) == {"num_cpus": 4, "num_gpus": 2}
    with pytest.raises(HarnessError, match=r"backend.replicas = 8 Ray replicas need 16 GPUs \(2 each\); the Ray "
                                           r"cluster has 8"):
        ray_resources(8, 1, {"tensor_parallel_size": 2}, {"CPU": 64.0, "GPU": 8.0})
    with pytest.raises(HarnessError, match="need 6 CPUs"):
        ray_resources(3, 2, {}, {"CPU": 4.0})
    # without Ray installed, a run that asks for it stops before it starts
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(HarnessError, match="backend.replicas_on is 'ray', but Ray is not installed"):
        load_config(None, ["backend.replicas=2", "backend.replicas_on=ray"])
    load_config(None, ["backend.replicas_on=ray"])  # one replica: Ray is not used
