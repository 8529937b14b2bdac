"""CUDA launch grids, checked without a GPU (and without importing numba.cuda).

CUDA refuses a grid of more than 2**31 - 1 blocks along x or 65,535 along y or z, or a block of
more than 1,024 threads; the CUDA simulator enforces none of it.  Here:

* the grid helpers of kernels/_dispatch.py against the limits (check_launch, grid_2d,
  grid_2d_strided, strided_grid);
* every CUDA launcher of kernels/*.py run on zero-stride NumPy arrays of the sizes of the CelebA
  layers at large batches, its kernels replaced by recorders that check each launch
  configuration with check_launch (so a launcher that builds its grid by hand is covered too);
* the low-occupancy warning switch and the scratch buffers of ``launch``, with a fake CuPy.

That the strided kernels cover every element when the cap applies is checked under the
simulator (cuda_sim_cases.py, with GRID_YZ_CAP lowered).
"""

from __future__ import annotations

from types import SimpleNamespace

import numba
import numpy as np
import pytest

from jmvae_cupy.kernels import _dispatch, adam, bernoulli, bias_relu, gauss_kl, im2col, reparam, winograd
from jmvae_cupy.kernels._dispatch import (
    LaunchGridError,
    check_launch,
    grid_2d,
    grid_2d_strided,
    launch,
    low_occupancy_warnings_off,
    strided_grid,
)

MODULES = (reparam, gauss_kl, adam, bernoulli, bias_relu, im2col, winograd)
YZ = 65535


def fake(shape, dtype=np.float32):
    """A read-only array of ``shape`` that takes no memory (zero strides): launchers only read
    shapes and sizes."""
    return np.broadcast_to(np.zeros((), dtype), shape)


# --------------------------------------------------------------------------------------------
# The helpers
# --------------------------------------------------------------------------------------------


def test_check_launch_accepts_the_limits():
    assert check_launch((2**31 - 1, YZ, YZ), (1024, 1, 1)) == ((2**31 - 1, YZ, YZ), (1024, 1, 1))
    check_launch(5, 256)
    check_launch((3, 2), (32, 8))
    check_launch((1, 1, 1), (16, 1, 64))


@pytest.mark.parametrize("blocks, threads, match", [
    ((2**31, 1, 1), (32, 1, 1), "along x"),
    ((1, YZ + 1), (32, 8), "along y"),
    ((1, 1, YZ + 1), (32, 8, 1), "along z"),
    ((0, 1), (32, 8), "along x"),
    (4, 1025, "threads along x"),
    ((1, 1, 1), (1, 1, 65), "threads along z"),
    ((1, 1), (64, 32), "threads per block"),
    ((1, 1, 1, 1), (32,), "1 to 3 dimensions"),
])
def test_check_launch_refuses_what_cuda_refuses(blocks, threads, match):
    with pytest.raises(LaunchGridError, match=match):
        check_launch(blocks, threads)


def test_grid_2d_is_exact_and_guarded():
    assert grid_2d(9, 40) == ((2, 2), (32, 8))
    assert grid_2d(8 * YZ, 1) == ((1, YZ), (32, 8))
    with pytest.raises(LaunchGridError, match="along y"):  # no loop over rows in its kernels
        grid_2d(8 * YZ + 1, 1)


# M = N * 32 * 32 rows of the CelebA 64x64 -> 32x32 layers (C64R, DC64BR's batch norm), D = 64:
# the old grid (one block row per 8 rows) passed 65,535 blocks at N = 512, and with --gan (the
# discriminator sees 3N images) at N = 171; and far beyond.
CELEBA_ROWS = [1024 * 512, 1024 * 3 * 171, 1024 * 3 * 4096, 10**9]


@pytest.mark.parametrize("M", CELEBA_ROWS)
def test_grid_2d_strided_caps_grid_y(M):
    assert (M + 7) // 8 > YZ  # the layout without a cap would not launch
    (bx, by), threads = grid_2d_strided(M, 64)
    assert threads == (32, 8) and bx == 2 and by == YZ


def test_strided_grid_reads_the_cap_at_each_call(monkeypatch):
    assert strided_grid((33, 40, 18), (32, 8, 1)) == ((2, 5, 18), (32, 8, 1))
    monkeypatch.setattr(_dispatch, "GRID_YZ_CAP", 2)
    assert strided_grid((33, 40, 18), (32, 8, 1)) == ((2, 2, 2), (32, 8, 1))
    assert grid_2d_strided(1000, 70) == ((3, 2), (32, 8))
    with pytest.raises(LaunchGridError, match="along x"):  # x is not capped: only guarded
        strided_grid((32 * 2**31, 1), (32, 1))


def test_bias_relu_row_blocks():
    assert [bias_relu.row_blocks(m) for m in (0, 1, 128, 129, 65536)] == [1, 1, 1, 2, 512]
    assert bias_relu.row_blocks(10**9) == bias_relu.MAX_ROW_BLOCKS <= YZ
    assert bias_relu.backward_scratch(64, 512, np.float32) == []  # a dense layer: db written directly
    assert bias_relu.backward_scratch(65536, 64, np.float32) == [((512, 64), np.float32)]


# --------------------------------------------------------------------------------------------
# Every launcher, at CelebA sizes
# --------------------------------------------------------------------------------------------


class Recorder:
    """Stands for a CUDA kernel: ``kernel[blocks, threads, stream](*args)`` checks and records the
    launch configuration and runs nothing."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def __getitem__(self, config):
        blocks, threads = config[0], config[1]
        check_launch(blocks, threads)  # LaunchGridError for a grid CUDA would refuse
        self.log.append((self.name, blocks, threads))
        return lambda *args: None


@pytest.fixture
def launches(monkeypatch):
    """Replace every kernel file's CUDA kernels by Recorders; yields the log of launches."""
    log = []
    for module in MODULES:
        names = module._cuda_signatures(numba.float32)
        kernels = SimpleNamespace(**{n: Recorder(f"{module.__name__.rsplit('.', 1)[1]}.{n}", log) for n in names})
        monkeypatch.setattr(module, "_cuda_kernels", lambda kernels=kernels: kernels)
    return log


def grid_of(log, name):
    return [blocks for n, blocks, _ in log if n == name]


@pytest.mark.parametrize("N", [512, 3 * 171, 3 * 4096])
def test_bias_relu_launches_at_celeba_batches(launches, N):
    M, D = 1024 * N, 64  # C64R (64x64 -> 32x32) and DC64BR rows
    bias_relu._bias_relu_forward_cuda(fake((M, D)), fake((D,)))
    (P, _), dtype = bias_relu.backward_scratch(M, D, np.float32)[0]
    bias_relu._bias_relu_backward_cuda(fake((M, D)), fake((M, D)), fake((M, D)), fake((D,)), fake((P, D)))
    (fx, fy), = grid_of(launches, "bias_relu.forward")
    assert fx * 32 >= D and fy <= YZ
    (bx, by), = grid_of(launches, "bias_relu.backward")
    assert bx * 32 >= D and by == P == bias_relu.MAX_ROW_BLOCKS
    assert grid_of(launches, "bias_relu.column_sum") == [(bx, 1)]


def test_bias_relu_backward_of_a_dense_layer_is_one_launch(launches):
    bias_relu._bias_relu_backward_cuda(fake((64, 512)), fake((64, 512)), fake((64, 512)), np.empty(512, np.float32))
    assert [n for n, *_ in launches] == ["bias_relu.backward"]
    assert grid_of(launches, "bias_relu.backward") == [(16, 1)]


@pytest.mark.parametrize("N", [2048, 7282, 3 * 4096])
def test_winograd_launches_at_celeba_batches(launches, N):
    """The 32x32 -> 16x16 layer (C128BR: B = 64 -> A = 128): z = N H = 32 N (input_adj), 9 N
    (input, output_adj), N OH = 16 N (output) blocks without the cap."""
    n, h, w, b, a = N, 32, 32, 64, 128
    th, tw = h // 4, w // 4
    winograd._input_cuda(fake((n, h, w, b)), fake((3, 3, n, th, tw, 2, 2, b)))
    winograd._input_adj_cuda(fake((3, 3, n, th, tw, 2, 2, b)), fake((n, h, w, b)))
    winograd._output_cuda(fake((3, 3, n, th, tw, a)), fake((n, h // 2, w // 2, a)), False)
    winograd._output_cuda(fake((3, 3, n, th, tw, a)), fake((n, h // 2, w // 2, a)), True)
    uncapped_z = {"input": 9 * n, "input_adj": n * h, "output": n * h // 2, "output_adj": 9 * n}
    assert max(uncapped_z.values()) > YZ
    for name, z in uncapped_z.items():
        (blocks,) = grid_of(launches, f"winograd.{name}")
        assert blocks[2] == min(z, YZ) and blocks[1] <= YZ, (name, blocks)


def test_every_cuda_launcher_fits_at_celeba_scale(launches):
    """All launchers of kernels/*.py at N = 3 * 4096 images (a GAN step of a 4096 batch), 50 M
    parameters: each launch configuration passes check_launch, and every CUDA kernel is
    launched at least once (a new kernel must be added here)."""
    N, f = 3 * 4096, np.float32
    a = fake((N, 128))
    reparam._reparam_forward_cuda(a, a, a, a)
    reparam._reparam_backward_cuda(a, a, a, a, a)
    gauss_kl._gauss_kl_forward_cuda(a, a, a, a, fake((N,)))
    gauss_kl._gauss_kl_backward_cuda(fake((N,)), a, a, a, a, a, a, a, a)
    gauss_kl._gauss_kl_prior_backward_cuda(fake((N,)), a, a, a, a)
    x = fake((N, 64 * 64 * 3))
    bernoulli._bernoulli_loglik_cuda(x, x, fake((N,)), x)
    p = fake((50_000_000,))
    adam._adam_cuda(p, p, p, p, *(f(0.1),) * 8)
    img, col = fake((N, 64, 64, 3)), fake((N, 32, 32, 4, 4, 3))  # C64R's im2col
    im2col._im2col_cuda(img, col, 2, 2, 1, 1)
    im2col._col2im_cuda(col, img, 2, 2, 1, 1)
    M = N * 1024
    bias_relu._bias_relu_forward_cuda(fake((M, 64)), fake((64,)))
    (P, D), _ = bias_relu.backward_scratch(M, 64, f)[0]
    bias_relu._bias_relu_backward_cuda(fake((M, D)), fake((M, D)), fake((M, D)), fake((D,)), fake((P, D)))
    th = 8
    winograd._input_cuda(fake((N, 32, 32, 64)), fake((3, 3, N, th, th, 2, 2, 64)))
    winograd._input_adj_cuda(fake((3, 3, N, th, th, 2, 2, 64)), fake((N, 32, 32, 64)))
    winograd._output_cuda(fake((3, 3, N, th, th, 128)), fake((N, 16, 16, 128)), False)
    winograd._output_cuda(fake((3, 3, N, th, th, 128)), fake((N, 16, 16, 128)), True)
    every = {f"{m.__name__.rsplit('.', 1)[1]}.{n}" for m in MODULES for n in m._cuda_signatures(numba.float32)}
    assert {n for n, *_ in launches} == every


# --------------------------------------------------------------------------------------------
# launch(): the CUDA path with a fake CuPy
# --------------------------------------------------------------------------------------------


class FakeDeviceArray:
    def __init__(self, a):
        self.a, self.stream = a, "stream-0"


def fake_cuda_path(monkeypatch):
    """A fake xp (not NumPy: launch takes the CUDA path) and a fake numba.cuda."""
    cuda = SimpleNamespace(as_cuda_array=lambda a, sync: FakeDeviceArray(a))
    monkeypatch.setattr(_dispatch, "numba_cuda", lambda: cuda)
    return SimpleNamespace(empty=lambda shape, dtype: np.full(shape, np.nan, dtype))


def test_launch_passes_scratch_then_scalars_and_silences_low_occupancy(monkeypatch):
    xp = fake_cuda_path(monkeypatch)
    monkeypatch.setattr(numba.config, "CUDA_LOW_OCCUPANCY_WARNINGS", 1)
    seen = {}

    def launcher(*args, stream):
        seen["args"], seen["stream"] = args, stream
        seen["warnings"] = numba.config.CUDA_LOW_OCCUPANCY_WARNINGS

    a = np.ones(3)
    launch(xp, None, launcher, (a, a), (True,), cuda_scratch=[((2, 3), np.float32)])
    *arrays, flag = seen["args"]
    assert [d.a.shape for d in arrays] == [(3,), (3,), (2, 3)] and arrays[2].a.dtype == np.float32
    assert flag is True and seen["stream"] == "stream-0"
    assert seen["warnings"] == 0  # off during the package's launch ...
    assert numba.config.CUDA_LOW_OCCUPANCY_WARNINGS == 1  # ... the user's setting back after


def test_low_occupancy_setting_is_restored_after_an_error(monkeypatch):
    monkeypatch.setattr(numba.config, "CUDA_LOW_OCCUPANCY_WARNINGS", 1)
    with pytest.raises(RuntimeError), low_occupancy_warnings_off():
        assert numba.config.CUDA_LOW_OCCUPANCY_WARNINGS == 0
        raise RuntimeError
    assert numba.config.CUDA_LOW_OCCUPANCY_WARNINGS == 1
