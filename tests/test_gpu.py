"""Checks that need an accelerator (marker ``gpu``). Without a CUDA device they are skipped, and pytest's ``-ra``
summary prints the reason; CI machines have none, so these run only where a GPU is present."""

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu, pytest.mark.model,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="gpu: no CUDA device (torch.cuda.is_available() is False)")]

CASES = [("What is the capital of France?", "The capital of France is Paris."),
         ("¿Cuál es la capital de España?", "La capital de España es Madrid, una ciudad grande y antigua."),
         ("Write a haiku about autumn.", "Leaves drift to the ground,\ncold wind hums a quiet song,\nthe year exhales.")]


def test_cuda_scoring_agrees_with_cpu_fp32():
    """The transformers backend on the GPU (fp32) gives the CPU's sums within 1e-3 nats per sequence."""
    from harness.backends import TransformersBackend
    from harness.models import resolve_model

    spec = resolve_model("smollm2-135m-instruct")
    cpu = TransformersBackend(spec, dtype="float32", device="cpu")
    gpu = TransformersBackend(spec, dtype="float32", device="cuda")
    prompts = [cpu.format_prompt(q) for q, _ in CASES]
    responses = [a for _, a in CASES]
    for a, b in zip(cpu.score(prompts, responses), gpu.score(prompts, responses)):
        assert len(a) == len(b) and abs(sum(a) - sum(b)) < 1e-3


def test_bf16_training_passes_preflight_on_a_gpu(tmp_path):
    """train.precision bf16 (the paper preset's) is refused on a CPU; on a GPU the real DPOConfig accepts it."""
    from harness.config import load_config
    from harness.pipeline import Pipeline

    cfg, _ = load_config(None, ["train.precision=bf16", "iterations=1", "prompts.limit=2"])
    assert Pipeline(cfg, tmp_path).preflight(strict=True) == []
