"""The loop end to end on the real SmolLM2 model: artifacts, skip/resume, SIGKILL mid-stage, changed settings."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli, wait_for_lines
from harness.io import read_json, read_jsonl

pytestmark = pytest.mark.model


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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
    yield cfg, root, root / "tiny", r
    shutil.rmtree(root, ignore_errors=True)  # two saved models: freed when the module is done, not at session end


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
    # stage 0 trained (pi_0 != pi_ref), so the implicit rewards are real numbers, not all 0
    assert read_json(run / "iter_0/train/train_metrics.json")["param_change_l2"] > 0
    assert sum(x["reward"] != 0 for r in rewards for x in r["responses"]) >= 20
    pairs = read_jsonl(run / "iter_1/pairs/pairs.jsonl")
    assert len(pairs) == 8 and any(p["chosen_reward"] != p["rejected_reward"] for p in pairs)
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
    # on CPU the train stages ran each pair's prompt once (harness.prefix): the reference pass and both steps
    assert m["shared_prompt_passes"] == 4 or not m["shared_prompt_passes"] and _cuda()
    assert read_json(run / "iter_0/train/train_metrics.json")["shared_prompt_passes"] > 0 or _cuda()
    assert (run / "iter_1/train/model/model.safetensors").exists()
    for stage in ("iter_0/train", "iter_1/sample", "iter_1/reward", "iter_1/pairs", "iter_1/train"):
        done = read_json(run / stage / "_done.json")
        # where the time went: the phases add up to the stage's wall time; model stages load and write
        assert sum(done["time"].values()) == pytest.approx(done["seconds"], abs=0.1), (stage, done["time"])
        assert "write" in done["time"] and done["time"]["compute"] > 0  # pairs writes in under 0.01 s
        if stage != "iter_1/pairs":
            assert done["time"]["load"] > 0, (stage, done["time"])
    assert not list(run.glob("iter_*/*.partial"))
    assert "where the time went" in finished_run[3].stderr and "load " in finished_run[3].stderr


def test_rerun_skips_everything(finished_run):
    cfg, root, run, _ = finished_run
    before = (run / "iter_1/train/_done.json").read_text()
    t0 = time.time()
    r = run_cli("run", str(cfg), "--runs-dir", str(root))
    assert r.returncode == 0
    assert r.stderr.count("skipped (done)") == 5
    assert (run / "iter_1/train/_done.json").read_text() == before
    assert time.time() - t0 < 60
    # nothing to train: the plan's checks do not build a trainer config, so no TRL, torch or model is loaded
    code = ("import sys; from harness.cli import main\n"
            f"try: main(['run', {str(cfg)!r}, '--runs-dir', {str(root)!r}])\nexcept SystemExit as e: assert not e.code\n"
            "print('HEAVY', [m for m in ('torch', 'transformers', 'trl') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "HEAVY []" in out.stdout, out.stderr[-3000:]


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
    # --until: the stages after it that have work are held; finished ones stay skipped
    r = run_cli("run", str(cfg), "--runs-dir", str(root), "--dry-run", "--force", "reward", "--until", "1:reward",
                env={"COLUMNS": "200"})
    status = {ln.split("│")[1].strip(): ln.split("│")[2].strip() for ln in r.stderr.splitlines()
              if ln.startswith("│") and "iter_" in ln}
    assert status == {"iter_0/train": "skip", "iter_1/sample": "skip", "iter_1/reward": "forced",
                      "iter_1/pairs": "held", "iter_1/train": "held"}, status


def test_sigkill_mid_stage_then_rerun_gives_identical_pairs_and_weights(finished_run, tmp_path):
    cfg, _, ref_run, _ = finished_run
    root = tmp_path / "killed"
    # the finished run up to its sample stage (stage 0 and the sampling are not what is killed here)
    shutil.copytree(ref_run, root / "tiny")
    for stage in ("reward", "pairs", "train"):
        shutil.rmtree(root / "tiny/iter_1" / stage)
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
                      "learning_rate: 1.0e-4, lora: {r: 4, alpha: 8}}\nlanguages: [es]\n"
                      "eval: {enabled: true, limit: 2, max_tokens: 8}\n", name="rt.yaml")
    root = tmp_path / "runs"
    # 2 prompts, 2 stage-0 pairs: one optimizer step per train stage
    r = run_cli("run", str(cfg), "--runs-dir", str(root), "sample.n=2", "prompts.limit=2", "stage0.limit=2",
                env={"COLUMNS": "400"})
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
    # with evaluation, a run ends with its leaderboard, its report and the iteration-to-iteration comparison
    board = (run / "leaderboard.md").read_text()
    assert all(f"| tiny (translate_en) | {m} |" in board for m in ("pi_ref", "pi_0", "pi_1", "pi_2"))
    assert {p.name for p in (run / "report" / "plots").glob("*.png")} == {
        "metrics.png", "on_target.png", "length_control.png", "training.png"}
    assert (run / "report" / "outputs" / "pi_2_es.html").is_file()
    said = " ".join(r.stderr.split())  # as printed, wrapped at the terminal's width (a longer tmp path wraps sooner)
    assert "no significant regression between consecutive models (3 comparisons" in said or "regression: es" in said
    assert f"report: {run / 'report' / 'index.html'}" in said


def test_interrupted_forced_stage_keeps_the_previous_result(finished_run, tmp_path):
    """--force 1:reward, killed mid-stage: the finished reward (and what follows) stays as it was; a rerun resumes the
    forced stage and swaps it in only when complete."""

    cfg, _, ref_run, _ = finished_run
    root = tmp_path / "forced"
    shutil.copytree(ref_run, root / "tiny")
    run = root / "tiny"
    before = {p: (run / p).read_bytes() for p in ("iter_1/reward/_done.json", "iter_1/reward/rewards.jsonl",
                                                   "iter_1/pairs/pairs.jsonl", "iter_1/train/_done.json")}
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(cfg), "--runs-dir", str(root), "--force",
                             "1:reward"], cwd=REPO, env=dict(os.environ, CI="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_lines(proc, run / "iter_1/reward.partial/policy_logps.jsonl", 2, 600)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert {p: (run / p).read_bytes() for p in before} == before
    r = run_cli("run", str(cfg), "--runs-dir", str(root), "--debug")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "iter_1/reward: resume" in r.stderr
    assert not (run / "iter_1/reward.partial").exists() and not (run / "iter_1/reward.old").exists()
    assert read_jsonl(run / "iter_1/reward/rewards.jsonl") == read_jsonl(ref_run / "iter_1/reward/rewards.jsonl")


KILL_IN_CHECKPOINT = """
import os, signal, sys
import transformers.trainer_callback as tc

original = tc.TrainerState.save_to_json

def save_to_json(self, path):
    if "checkpoint-3" in path:  # weights, optimizer and RNG state of step 3 are written: cut trainer_state.json short
        with open(path, "w") as fh:
            fh.write('{"global_step": 3, "log_hist')
            fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    original(self, path)

tc.TrainerState.save_to_json = save_to_json
from harness.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_while_writing_a_checkpoint_resumes_from_the_newest_complete_one(tiny_config, tmp_path):
    """SIGKILL while the trainer writes checkpoint-3 (trainer_state.json torn): the rerun drops that folder, resumes
    from checkpoint-2 and ends with the weights of an uninterrupted run (it used to crash on every rerun)."""
    cfg = tiny_config("iterations: 0\n", name="ckpt.yaml")
    # 3 steps, killed in the last one; short sequences (what is checked is the resume, not the length)
    steps = ["stage0.limit=3", "train.batch_size=1", "train.warmup_ratio=0.0", "train.max_length=48"]
    over = [*steps, "train.save_steps=1", "train.save_total_limit=3"]
    ref = run_cli("run", str(cfg), "--runs-dir", str(tmp_path / "ref"), *steps)  # no checkpoints: they change nothing
    assert ref.returncode == 0, ref.stderr[-3000:]
    root = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILL_IN_CHECKPOINT, "run", str(cfg), "--runs-dir", str(root), *over],
                            cwd=REPO, env=dict(os.environ, CI="1"), capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    trainer = root / "tiny/iter_0/train.partial/trainer"
    assert (trainer / "checkpoint-3/model.safetensors").exists() and (trainer / "checkpoint-2").exists()
    r = run_cli("run", str(cfg), "--runs-dir", str(root), *over)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint-3 is incomplete" in r.stderr and "resuming from checkpoint-2" in r.stderr
    a, b = _tensors(root / "tiny/iter_0/train/model"), _tensors(tmp_path / "ref/tiny/iter_0/train/model")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert read_json(root / "tiny/iter_0/train/train_metrics.json")["steps"] == 3
