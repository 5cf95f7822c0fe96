"""The loop end to end on the real SmolLM2 model: artifacts, skip/resume, SIGKILL mid-stage, changed settings."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli, wait_for_lines
from harness.io import read_json, read_jsonl

pytestmark = pytest.mark.model


def _tensors(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One uninterrupted tiny run (stage 0 + 1 iteration) shared by the tests below."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("runs")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY.format(extra=""))
    r = run_cli("run", str(cfg), "--runs-dir", str(root))
    assert r.returncode == 0, r.stderr[-3000:]
    return cfg, root, root / "tiny", r


def test_artifact_contract(finished_run):
    cfg, root, run, _ = finished_run
    meta = read_json(run / "run.json")
    assert meta["config"]["languages"] == ["en", "es"] and "torch" in meta["versions"] and "trl" in meta["versions"]
    rewards = read_jsonl(run / "iter_1/reward/rewards.jsonl")
    assert len(rewards) == 8 and {r["lang"] for r in rewards} == {"en", "es"}
    for r in rewards:
        assert r["prompt"] and r["prompt_en"] and len(r["responses"]) == 3
        if r["lang"] == "es":  # cross-lingual: the English instruction with the Spanish prefix
            assert r["reward_instruction"].startswith("Please answer the following instruction using only Spanish")
            assert r["reward_instruction"].endswith(r["prompt_en"])
        for x in r["responses"]:
            assert x["reward"] == pytest.approx(x["policy_logp"] - x["ref_logp"], abs=1e-9)
            assert round(x["policy_logp"], 4) == x["policy_logp"]
    pairs = read_jsonl(run / "iter_1/pairs/pairs.jsonl")
    assert len(pairs) == 8
    for p in pairs:
        for key in ("lang", "id", "prompt", "chosen", "rejected", "chosen_reward", "rejected_reward",
                    "chosen_length", "rejected_length"):
            assert key in p
        assert p["chosen_length"] == len(p["chosen"])
    summary = read_json(run / "iter_1/pairs/summary.json")
    for lang in ("en", "es"):
        s = summary[lang]
        assert s["prompts"] == 4 and s["pairs"] + s["degenerate_dropped"] == 4
        assert 0.0 <= s["alpha"] < 1.0 and "mean_chosen_length" in s and "upper_bound" in s
    m = read_json(run / "iter_1/train/train_metrics.json")
    assert m["param_change_l2"] > 0 and m["steps"] == 2
    assert (run / "iter_1/train/model/model.safetensors").exists()
    for stage in ("iter_0/train", "iter_1/sample", "iter_1/reward", "iter_1/pairs", "iter_1/train"):
        assert (run / stage / "_done.json").exists()
    assert not list(run.glob("iter_*/*.partial"))


def test_rerun_skips_everything(finished_run):
    cfg, root, run, _ = finished_run
    before = (run / "iter_1/train/_done.json").read_text()
    t0 = time.time()
    r = run_cli("run", str(cfg), "--runs-dir", str(root))
    assert r.returncode == 0
    assert r.stderr.count("skipped (done)") == 5
    assert (run / "iter_1/train/_done.json").read_text() == before
    assert time.time() - t0 < 60


def test_changed_setting_reruns_exactly_the_affected_stages(finished_run):
    cfg, root, run, _ = finished_run
    r = run_cli("run", str(cfg), "--runs-dir", str(root), "--dry-run", "pairs.upper_bound=5",
                env={"COLUMNS": "200"})
    status = {ln.split("│")[1].strip(): ln.split("│")[2].strip() for ln in r.stderr.splitlines()
              if ln.startswith("│") and "iter_" in ln}
    assert status == {"iter_0/train": "skip", "iter_1/sample": "skip", "iter_1/reward": "skip",
                      "iter_1/pairs": "rerun", "iter_1/train": "rerun"}
    r = run_cli("run", str(cfg), "--runs-dir", str(root), "--dry-run", "--force", "reward", env={"COLUMNS": "200"})
    status = {ln.split("│")[1].strip(): ln.split("│")[2].strip() for ln in r.stderr.splitlines()
              if ln.startswith("│") and "iter_" in ln}
    assert status["iter_1/sample"] == "skip" and status["iter_1/reward"] == "forced"
    assert status["iter_1/train"] == "forced"


def test_sigkill_mid_stage_then_rerun_gives_identical_pairs_and_weights(finished_run, tmp_path):
    cfg, _, ref_run, _ = finished_run
    root = tmp_path / "killed"
    env = dict(os.environ, CI="1")
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(cfg), "--runs-dir", str(root)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_lines(proc, root / "tiny/iter_1/reward.partial/policy_logps.jsonl", 2, 600)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    run = root / "tiny"
    assert (run / "iter_1/reward.partial").exists() and not (run / "iter_1/reward").exists()
    r = run_cli("run", str(cfg), "--runs-dir", str(root), "--debug")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "iter_1/reward: resume" in r.stderr
    assert read_jsonl(run / "iter_1/pairs/pairs.jsonl") == read_jsonl(ref_run / "iter_1/pairs/pairs.jsonl")
    a, b = _tensors(run / "iter_1/train/model"), _tensors(ref_run / "iter_1/train/model")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)


def test_translate_en_lora_and_previous_reference(tiny_config, tmp_path):
    """R_t with self-translation, LoRA training (merged into a full folder), pi_{t-1} as the reward reference."""
    cfg = tiny_config("strategy: translate_en\niterations: 2\nreward: {chunk: 2, reference: previous, "
                      "translate_max_tokens: 24}\ntrain: {method: lora, batch_size: 2, warmup_ratio: 0.0, max_length: 96, "
                      "learning_rate: 1.0e-4, lora: {r: 4, alpha: 8}}\nlanguages: [es]\n", name="rt.yaml")
    root = tmp_path / "runs"
    r = run_cli("run", str(cfg), "--runs-dir", str(root), "sample.n=2")
    assert r.returncode == 0, r.stderr[-3000:]
    run = root / "tiny"
    rows = read_jsonl(run / "iter_1/reward/rewards.jsonl")
    assert all("translation" in x for row in rows for x in row["responses"])
    assert all(row["reward_instruction"] == row["prompt_en"] for row in rows)  # English, no prefix
    assert {p["lang"] for p in read_jsonl(run / "iter_1/pairs/pairs.jsonl")} == {"es"}
    done2 = read_json(run / "iter_2/reward/_done.json")
    assert done2["settings"]["reference"] == {"trained_by": read_json(run / "iter_0/train/_done.json")["hash"]}
    m = read_json(run / "iter_1/train/train_metrics.json")
    assert m["method"] == "lora" and m["param_change_l2"] > 0
    model = run / "iter_1/train/model"
    assert (model / "model.safetensors").exists() and not (model / "adapter_config.json").exists()
