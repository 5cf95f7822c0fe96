"""What this machine computes fast, read without importing torch (a config's ``auto`` precision is resolved from it
when it is loaded, and the plan warns about a bf16 setting that would crawl).

bf16 on a CPU is fast only with AVX-512 (oneDNN's bf16 kernels; native with AVX512_BF16 or AMX) or Arm's BF16
extension. Without them PyTorch multiplies bf16 in a scalar fallback: on a 2-core AVX2 EPYC (Zen) a 2048 x 2048
matmul ran at 1.5 GFLOP/s in bf16 against 67 in fp32, and vLLM sampled the demo model at 17 tokens/s in bf16 against
78 in fp32 (2026-12-07, /tmp scripts quoted in the stop note).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

# torch's own test (aten mkldnn_bf16_device_check): AVX-512 BW+VL+DQ on x86, or these
_X86_BF16 = ({"avx512bw", "avx512vl", "avx512dq"}, {"avx512_bf16"}, {"amx_bf16"})


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, aarch64
            return frozenset(value.split())
    return frozenset()


def cuda_gpu() -> bool:
    """An NVIDIA GPU this process may use: the driver's folder lists one, CUDA_VISIBLE_DEVICES does not hide it, and
    the installed torch is a CUDA build (a CPU build on a GPU machine trains on the CPU: auto must not pick bf16)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir()) and _torch_cuda_build()


@lru_cache(maxsize=None)
def _torch_cuda_build() -> bool:
    """torch/version.py names a CUDA version (read as text: importing torch here would slow every config load)."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return False
    try:
        text = (Path(spec.origin).parent / "version.py").read_text()
    except OSError:
        return False
    found = re.search(r"^cuda\b[^=\n]*=\s*(\S+)", text, re.M)
    return bool(found) and found.group(1) != "None"


def cpu_bf16() -> bool:
    """Whether this CPU has bf16 matmul kernels (else bf16 runs in PyTorch's scalar fallback, ~40x slower than fp32)."""
    flags = cpu_flags()
    if platform.machine() in ("aarch64", "arm64"):
        return "bf16" in flags
    return any(need <= flags for need in _X86_BF16)


def fast_bf16() -> bool:
    """bf16 is the faster precision here: a GPU, or a CPU with bf16 kernels."""
    return cuda_gpu() or cpu_bf16()


def resolve_dtype(value: str | None) -> str | None:
    """``auto`` -> bfloat16 where bf16 is fast here, else float32 (anything else unchanged)."""
    if value != "auto":
        return value
    return "bfloat16" if fast_bf16() else "float32"


def resolve_precision(value: str) -> str:
    """``train.precision: auto`` -> bf16 on a GPU, bf16_cpu (autocast) on a CPU with bf16 kernels, else fp32."""
    if value != "auto":
        return value
    if cuda_gpu():
        return "bf16"
    return "bf16_cpu" if cpu_bf16() else "fp32"


def slow_bf16_warning(what: str) -> str | None:
    """One line for a bf16 setting on a CPU without bf16 kernels (None where bf16 is fine)."""
    if fast_bf16():
        return None
    return (f"{what} asks for bf16, but this CPU has no bf16 matmul kernels (no AVX-512 / AMX): bf16 runs in a "
            f"fallback about 40x slower than fp32 here; 'auto' picks fp32 on such a machine")


# glibc's malloc: M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h) and the largest mmap threshold it accepts on 64 bits
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


@lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks of up to 32 MB for reuse (and up to 1 GB of free heap) instead of
    handing them back to the OS. True where it was set (glibc), False elsewhere; once per process.

    By default glibc maps a block above its threshold afresh (first 128 KB; it rises to the size of the last such
    block freed) and unmaps it when it is freed, so every new page of it faults and is zeroed again. A decoding
    loop's key/value cache grows a little at every step, so its blocks stay just above the threshold for the whole
    first ``generate`` call: on the demo's sampling workload (48 prompts x n=4, 48 tokens, fp32, the AVX2 EPYC) the
    first call took 59.4 s and the next ones 40.1 and 39.5; with this set, 43.5 and 43.3 (2026-12-08). A setting of
    the thresholds here turns glibc's adjustment of them off. A process keeps up to ``TRIM_THRESHOLD`` of freed heap,
    which its next allocations reuse."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):  # pragma: no cover - a libc without mallopt
        return False
