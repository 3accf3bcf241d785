"""What the hardware can do: the --device check, measured matmul peak, load, GPU peak
table, CPU dtype.

MFU in scalelab is model FLOP/s (sizing.flops_per_token x tokens/s) divided by a peak:
on GPUs the vendor's dense bf16 peak (`gpu_peak_flops`), on CPUs the matmul rate
measured on this machine, with these threads, now (`measure_matmul_peak`) -- shared
CPUs vary too much for any table.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch


def available_devices() -> list[str]:
    """The --device values that work here: cpu, and cuda, cuda:0 .. cuda:N-1 when GPUs are visible."""
    out = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += ["cuda"] + [f"cuda:{i}" for i in range(n)]
    return out


def _no_cuda_reason() -> str:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build of torch"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
    return f"no CUDA GPU is visible to this torch ({torch.__version__}){hint}"


def resolve_device(device: str | torch.device | None, flag: str = "--device") -> torch.device:
    """The one check of a requested device, before any work: None / "auto" -> cuda when
    available, else cpu; cpu, cuda, cuda:N must be usable here. ConfigError names the
    device and what is available (a typo like "tpu" or "gpu" never falls back to the CPU)."""
    from scalelab.errors import ConfigError

    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    avail = ", ".join(available_devices())
    try:
        dev = device if isinstance(device, torch.device) else torch.device(str(device).strip())
    except (RuntimeError, ValueError):
        raise ConfigError(f"{flag} '{device}' is not a device; scalelab runs on cpu or cuda[:N]. "
                          f"Available here: {avail}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ConfigError(f"{flag} '{device}': scalelab runs on cpu or cuda[:N], not {dev.type}. Available here: {avail}")
    if not torch.cuda.is_available():
        raise ConfigError(f"{flag} '{device}': {_no_cuda_reason()}. Available here: {avail}")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{flag} '{device}': only {torch.cuda.device_count()} CUDA GPU(s) are visible. "
                          f"Available here: {avail}")
    return dev


@contextmanager
def num_threads(threads: int | None):
    """Temporarily set torch's intra-op CPU threads (None: leave as is)."""
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(dtype: torch.dtype = torch.float32, n: int | None = None, seconds: float = 1.0,
                        threads: int | None = None, device: str | torch.device = "cpu",
                        clock: str = "wall") -> float:
    """Best sustained FLOP/s of square n x n matmuls (2 n^3 FLOPs each), measured now.

    The time is split into ~10 bursts and the fastest burst is returned (a peak, so MFU
    against it is a lower bound). n defaults to 1536 on CPU and 8192 on GPU; on CPU the
    size shrinks when one matmul would take more than a tenth of `seconds` (some CPUs run
    bf16 matmuls 100x slower than fp32), so the call always ends in about `seconds`.

    clock="cpu" (CPU only) divides by this process's CPU time instead of wall time:
    FLOPs per CPU-second, which other processes competing for the cores barely change.
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    timer = time.process_time if clock == "cpu" else time.perf_counter
    device = torch.device(device)
    if n is None:
        n = 8192 if device.type == "cuda" else 1536
    with num_threads(threads if device.type == "cpu" else None):
        if device.type == "cuda":  # small GPU matmuls are launch-bound: no point probing
            size = n
            rate = _time_matmuls(size, dtype, device, reps=3)
        else:  # estimate the rate on a small problem first, then size the real one to fit
            size = min(n, 256)
            rate = _time_matmuls(size, dtype, device, reps=2)
            while size < n:
                nxt = min(n, size * 2)
                if 2 * nxt**3 / rate > seconds / 10:
                    break
                size = nxt
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        per = 2.0 * size**3
        a @ b  # warm-up
        _sync(device)
        reps = max(1, int(seconds / 10 * rate / per))
        best, deadline = 0.0, time.perf_counter() + seconds
        while True:
            t0 = timer()
            for _ in range(reps):
                a @ b
            _sync(device)
            dt = max(timer() - t0, 1e-9)
            best = max(best, reps * per / dt)
            if time.perf_counter() > deadline:
                return best


def _time_matmuls(size: int, dtype: torch.dtype, device: torch.device, reps: int) -> float:
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return reps * 2.0 * size**3 / max(time.perf_counter() - t0, 1e-9)


def pick_cpu_dtype(threads: int | None = None, seconds: float = 0.3, margin: float = 1.1) -> torch.dtype:
    """Measure fp32 and bf16 matmuls on this CPU and return the faster dtype.

    bf16 wins only when it is more than `margin` times faster (fp32 on a tie): CPUs
    without native bf16 (AVX512-BF16 / AMX) emulate it, sometimes 100x slower.
    """
    fp32 = measure_matmul_peak(torch.float32, n=512, seconds=seconds, threads=threads)
    bf16 = measure_matmul_peak(torch.bfloat16, n=512, seconds=seconds, threads=threads)
    return torch.bfloat16 if bf16 > margin * fp32 else torch.float32


def machine_load() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages (/proc/loadavg; os.getloadavg elsewhere)."""
    try:
        with open("/proc/loadavg") as f:
            a, b, c = f.read().split()[:3]
        return float(a), float(b), float(c)
    except OSError:
        try:
            return os.getloadavg()
        except OSError:
            return (float("nan"),) * 3


# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, from vendor datasheets.
# Matched in order against torch.cuda.get_device_name(): specific names first.
GPU_BF16_PEAK: list[tuple[str, float]] = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIE", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("H800", 989e12),
    ("H20", 148e12),
    ("B200", 2250e12),
    ("B100", 1750e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A6000", 155e12),  # RTX A6000
    ("A40", 150e12),
    ("A30", 165e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("RTX 6000 ADA", 364e12),
    ("4090", 165e12),
    ("3090", 71e12),
    ("MI300X", 1307e12),
    ("MI250X", 383e12),
    ("V100", 125e12),  # no bf16: fp16 tensor-core peak
    ("T4", 65e12),  # fp16
]


def gpu_peak_flops(device: str | torch.device | int | None = None) -> float | None:
    """Vendor dense bf16 peak FLOP/s of a CUDA/ROCm device, or None if unknown / not a GPU."""
    if not torch.cuda.is_available():
        return None
    if isinstance(device, (str, torch.device)):
        device = torch.device(device)
        if device.type != "cuda":
            return None
    name = torch.cuda.get_device_name(device).upper()
    return peak_for_name(name)


def peak_for_name(name: str) -> float | None:
    """Table lookup by device name (case-insensitive substring match)."""
    name = name.upper()
    for key, peak in GPU_BF16_PEAK:
        if key in name:
            return peak
    return None
