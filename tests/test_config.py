import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import load_config, parse_override, preset_path
from harness.errors import HarnessError


def test_defaults_yaml_and_overrides_precedence(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train: {beta: 0.3}\nlanguages: [en, fr]\n")
    cfg, _ = load_config(p, ["train.beta=0.2", "sample.n=6"])
    assert cfg.train.beta == 0.2 and cfg.sample.n == 6 and cfg.languages == ["en", "fr"]
    assert cfg.train.nll_weight == 1.0  # default kept


def test_override_values_are_yaml_not_comma_split():
    assert parse_override("languages=[de, zh, sw]") == (["languages"], ["de", "zh", "sw"])
    assert parse_override("pairs.upper_bound=null") == (["pairs", "upper_bound"], None)
    assert parse_override("run_name=a,b") == (["run_name"], "a,b")


def test_per_iteration_settings():
    cfg, _ = load_config(preset_path("paper"))
    assert cfg.for_iteration(1).pairs.upper_bound is None
    assert cfg.for_iteration(2).pairs.upper_bound == 500.0


@pytest.mark.parametrize("override,msg", [
    ("trian.beta=1", "unknown config key 'trian'; did you mean 'train'"),
    ("train.bta=1", "did you mean 'train.beta'"),
    ("languages=[en,xx]", "unknown language 'xx'"),
    ("strategy=cross_lingul", "did you mean 'cross_lingual'"),
    ("sample.n=1", "sample.n must be >= 2"),
    ("sample.n=abc", "must be an integer"),
    ("reward.reference=pi_0", "reward.reference must be one of"),
    ("per_iteration={7: {pairs: {upper_bound: 1}}}", "per_iteration key '7'"),
    ("stage0.train={bta: 1}", "unknown config key 'stage0.train.bta'; did you mean 'stage0.train.beta'"),
])
def test_bad_config_is_one_clear_line(override, msg):
    with pytest.raises(HarnessError) as e:
        load_config(None, [override])
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run_name: x\ntrain: {beta: [\n")
    with pytest.raises(HarnessError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}:") and "malformed YAML" in str(e.value)


@pytest.mark.parametrize("flags, machine, expect", [
    ({"avx2", "fma"}, "x86_64", ("float32", "fp32")),  # AVX2 only (the EPYC of 2026-12-07): bf16 would crawl
    ({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, "x86_64", ("bfloat16", "bf16_cpu")),
    ({"avx2", "amx_bf16", "avx512_bf16"}, "x86_64", ("bfloat16", "bf16_cpu")),
    ({"fp", "asimd", "bf16"}, "aarch64", ("bfloat16", "bf16_cpu")),
    ({"fp", "asimd"}, "aarch64", ("float32", "fp32")),
])
def test_auto_precision_is_what_this_cpu_computes_fast(monkeypatch, flags, machine, expect):
    """``auto`` (the demo's sample.dtype, eval.dtype and train.precision) resolves at load from the CPU's flags, in
    every section that holds it, so the stage hashes and the trainer see the concrete value; an explicit bf16 setting
    stays as asked, with a warning in the plan where the CPU has no bf16 kernels."""
    from harness import hardware
    from harness.pipeline import Pipeline

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(hardware.platform, "machine", lambda: machine)
    monkeypatch.setattr(hardware, "cuda_gpu", lambda: False)
    cfg, data = load_config(preset_path("demo"), ["per_iteration={2: {sample: {dtype: auto}, train: {precision: auto}}}",
                                     "stage0.train.precision=auto"])
    dtype, precision = expect
    assert (cfg.sample.dtype, cfg.eval.dtype, cfg.train.precision) == (dtype, dtype, precision)
    assert cfg.for_iteration(2).sample.dtype == dtype and cfg.train_for(2).precision == precision
    assert cfg.train_for(0).precision == precision and data["train"]["precision"] == precision
    from harness.stages.train import build_dpo_config

    built = build_dpo_config(cfg.train_for(0), Path("/nonexistent-runs/demo"), 0)  # what the trainer is given
    assert (built.bf16, built.use_cpu) == ((precision == "bf16_cpu",) * 2)
    explicit, _ = load_config(preset_path("demo"), ["sample.dtype=bfloat16"])
    assert explicit.sample.dtype == "bfloat16"
    notes = Pipeline(explicit, Path("/nonexistent-runs")).preflight(strict=False)
    slow = [n for n in notes if "no bf16 matmul kernels" in n]
    assert slow == ([] if dtype == "bfloat16" else [slow[0]]) and (not slow or "sample.dtype = bfloat16" in slow[0])


def test_torch_cuda_build_is_read_without_importing_torch():
    """auto picks bf16 for a GPU only when the installed torch can use it: its CUDA build is read from
    torch/version.py as text, and agrees with torch's own answer."""
    import subprocess
    import sys

    code = ("import sys; from harness.hardware import _torch_cuda_build; print(_torch_cuda_build(), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    import torch

    assert out == [str(torch.version.cuda is not None), "False"]


_MALLINFO = """
import ctypes, sys
from harness.hardware import keep_freed_memory
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                                                "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # once per process: the second call is a no-op
before = libc.mallinfo2().hblkhd
block = libc.malloc(16 << 20)
print(libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


def test_freed_memory_is_kept_for_reuse():
    """harness.hardware.keep_freed_memory, in fresh processes: glibc maps a 16 MB block afresh (and would unmap it at
    free, so its pages fault again next time); with the setting it comes from the heap, which keeps it for reuse."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc >= 2.33 only")

    def mapped(mode: str) -> int:
        r = subprocess.run([sys.executable, "-c", _MALLINFO, mode], capture_output=True, text=True, check=True)
        return int(r.stdout.strip())

    assert mapped("default") >= 16 << 20
    assert mapped("keep") == 0
