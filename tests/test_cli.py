"""The command line, in subprocesses, as a user runs it."""

import subprocess
import sys

import pytest

from conftest import REPO, run_cli


def test_help_and_ls_import_no_heavy_library():
    code = ("import sys; from harness.cli import main\n"
            "try: main(['ls'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'vllm', 'trl') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_ls_lists_every_kind_with_descriptions():
    r = run_cli("ls")
    assert r.returncode == 0
    for word in ("models", "languages", "strategies", "backends", "cross_lingual", "Swahili", "smollm2-135m-instruct",
                 "presets", "demo", "paper"):
        assert word in r.stderr
    r = run_cli("ls", "strategies")
    assert "translate_en" in r.stderr and "Swahili" not in r.stderr


def test_paper_preset_dry_run_plans_offline(tmp_path):
    """The paper's prompts (upstream random_3000) are not local: the plan comes from prompts.limit, says what will be
    downloaded, and reports what this CPU machine lacks (a GPU for bf16, the API key) without failing."""
    r = run_cli("run", "paper", "--dry-run", "--runs-dir", str(tmp_path),
                env={"COLUMNS": "250", "HARNESS_CACHE": str(tmp_path / "cache"), "OPENAI_API_KEY": ""})
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stderr.split())
    assert "iter_1/sample" in text and "iter_2/train" in text and "iter_0/train" not in text
    assert "15000 prompts x n=10 = 150000 samples" in text and "360,000,000 new tokens" in text
    assert "random_3000 (de, en, es, fr, ru) from the ICR repository" in text and "will be downloaded" in text
    assert "iter_ref/eval" in text and "4025 X-AlpacaEval answers" in text
    assert "(full, bf16, batch 32; accelerate launch, 8 processes (zero3))" in text
    assert "weighted_alpaca_eval_gpt4_turbo_multilingual judgements, LC official" in text
    assert "precision bf16 needs a GPU" in text and "needs an API key" in text
    assert "dry run: nothing was loaded or written" in text
    assert not (tmp_path / "paper").exists() and not (tmp_path / "cache").exists()


def test_dry_run_estimates_each_stage_from_given_throughputs(tmp_path):
    """--throughput FILE: each stage's work over the tokens/s of one engine or process times their number (sampling
    and scoring over backend.replicas, training over train.accelerate.num_processes), and the total left."""
    tp = tmp_path / "tp.yaml"
    tp.write_text("model: llama-3.1-8b-instruct\nsample: 2500\nscore: 10000\ntrain: 2000\njudge: 2\n")
    r = run_cli("run", "paper", "--dry-run", "--throughput", str(tp), "--runs-dir", str(tmp_path),
                "backend.replicas=4", env={"COLUMNS": "300", "HARNESS_CACHE": str(tmp_path / "cache"),
                                           "OPENAI_API_KEY": ""})
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stderr.split())
    # 15,000 prompts x 10 samples x 2,400 tokens = 360 M new tokens over 4 engines at 2,500 tokens/s: 36,000 s
    assert "10.0 h (360,000,000 new tokens / 4 engine(s))" in text
    # policy + reference: 720 M tokens / (4 x 10,000) = 18,000 s; translate_en is not this run's strategy
    assert "5.0 h (720,000,000 response tokens scored / 4 engine(s))" in text
    # <= 15,000 pairs x 2 x 2,400 tokens, + a third for the reference pass, / (8 processes x 2,000) = 6,000 s
    assert "1.7 h (72,000,000 tokens / 8 process(es))" in text
    # 4,025 answers x 2,048 tokens / 2,500 + 4,025 API judgements / 2 per s = 3,297 + 2,012 s
    assert "88 min (4025 answers + 4025 API judgements)" in text
    assert "estimated time of what is left: about" in text and f"tokens/s of {tp}" in text
    assert "measured on llama-3.1-8b-instruct, this run uses" in text
    assert not (tmp_path / "paper").exists()


def test_paper_preset_uses_the_authors_settings():
    from harness.config import load_config, preset_path

    cfg, _ = load_config(preset_path("paper"))
    assert cfg.reward.translate_max_tokens == 8192  # the authors' R_t code
    assert cfg.train.save_steps and cfg.train.max_length == 4096 and cfg.train.beta == 0.1
    assert cfg.for_iteration(2).pairs.upper_bound == 500 and cfg.for_iteration(1).pairs.upper_bound is None


@pytest.mark.parametrize("args,msg", [
    (["run", "demo", "models.reference=smollm3"], "unknown model 'smollm3'; did you mean 'smollm2-135m-instruct'"),
    (["run", "demo", "models.reference=/nonexistent/model"], "model folder '/nonexistent/model' does not exist"),
    (["run", "demo", "languages=[en,klingon]"], "unknown language 'klingon'"),
    (["run", "nosuchpreset"], "neither a config file nor a preset"),
    (["run", "demo", "prompts.source=/nonexistent"], "/nonexistent: prompt folder does not exist"),
])
def test_bad_input_is_one_line_exit_2(args, msg, tmp_path):
    r = run_cli(*args, "--dry-run", "--runs-dir", str(tmp_path))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error: ") and msg in lines[0], r.stderr


def test_malformed_prompt_file_is_named(tmp_path):
    d = tmp_path / "prompts"
    d.mkdir()
    (d / "en.jsonl").write_text('{"id": "a", "prompt": "A"}\n{"id": "b", "prompt": "B"\n')
    (d / "es.jsonl").write_text('{"id": "a", "prompt": "A", "prompt_en": "A"}\n')
    r = run_cli("run", "demo", f"prompts.source={d}", "languages=[en,es]", "--dry-run", "--runs-dir", str(tmp_path))
    assert r.returncode == 2 and f"{d / 'en.jsonl'}:2: malformed JSON line" in r.stderr


@pytest.mark.skipif(__import__("shutil").which("nvidia-smi") is not None, reason="a GPU machine runs the whole check")
def test_gpu_check_script_says_why_it_is_skipped():
    """tests/gpu/check.sh (the GPU check of issue 14) exits 0 on a machine without a GPU, saying why it skipped."""
    r = subprocess.run(["bash", str(REPO / "tests" / "gpu" / "check.sh")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "tests/gpu/check.sh: skipped: no NVIDIA GPU on this machine (nvidia-smi finds none)"
