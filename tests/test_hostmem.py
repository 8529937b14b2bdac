"""jmvae_cupy/hostmem.py: a training process keeps freed memory instead of re-faulting it every step."""

import platform
import subprocess
import sys
import textwrap

import pytest

# A step-like pattern: arrays of 2-42 MB allocated and freed in an order that leaves the heap's top
# free at the end of every iteration.  Prints the minor page faults per iteration once warm.
PATTERN = textwrap.dedent("""
    import resource, sys
    import numpy as np
    if sys.argv[1] == "keep":
        from jmvae_cupy.hostmem import keep_freed_memory
        assert keep_freed_memory() and keep_freed_memory()  # applied, idempotent
    def step():
        a = np.ones((2000, 1000), np.float32)
        b = np.ones((1000, 500), np.float32)
        c = a[:1000, :500] + b
        del a
        d = np.ones((3000, 1000), np.float32)
        e = np.ones((10_500_000,), np.float32)  # 42 MB: above any mmap threshold glibc allows
        return float(c.sum() + d.sum() + e[::4096].sum())
    for _ in range(5):
        step()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
""")


def _faults(mode: str) -> float:
    p = subprocess.run([sys.executable, "-c", PATTERN, mode], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return float(p.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc policy")
def test_keep_freed_memory_removes_the_per_step_page_faults():
    default, kept = _faults("default"), _faults("keep")
    # glibc's default returns the freed top of the heap and re-faults it (measured ~1,700 pages per
    # iteration); kept, the pages stay mapped and the next iteration reuses them.
    assert default > 500, f"the pattern no longer provokes faults under the default policy ({default})"
    assert kept < 50, f"{kept} page faults per iteration with keep_freed_memory()"
