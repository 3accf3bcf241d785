"""train/host_memory.py: freed activations are reused, not re-faulted, after the setting."""
import os
import subprocess
import sys
import textwrap

import pytest

# A fresh interpreter per case: the setting is process-wide and cannot be undone.
_PROBE = textwrap.dedent("""
    import resource, sys
    import torch
    from scalelab.train.host_memory import keep_freed_host_memory, host_memory_state
    if sys.argv[1] == "keep":
        state = keep_freed_host_memory()
    else:
        state = host_memory_state()
    def step():  # allocate, touch and free activation-sized blocks, like a training step
        for _ in range(4):
            a = torch.ones(40 * 2**20 // 4)  # 40 MB: above glibc's largest mmap threshold
            b = a * 2.0
            del a, b
    for _ in range(3):  # warm up: the heap settles at the step's high-water mark
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    print(state + "|" + str(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
""")


def _faults(mode: str, env_extra: dict | None = None) -> tuple[str, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True, text=True,
                         check=True).stdout.strip().split("|")
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt: Linux only")
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    state, kept = _faults("keep")
    assert state == "kept"
    _, default = _faults("default")
    # 8 blocks of 40 MB = 80,000 pages of 4 KB touched anew by default; almost none when kept.
    assert default > 40_000
    assert kept < default / 20


def test_switched_off_by_environment():
    state, _ = _faults("keep", {"SCALELAB_HOST_MEMORY": "default"})
    assert state == "default"
