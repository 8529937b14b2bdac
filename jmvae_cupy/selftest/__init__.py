"""The selftest of an installation: ``python -m jmvae_cupy.selftest [--device cpu|gpu|auto]
[--json FILE] [--quick]`` (the command: run.py; README, "Check your GPU install").

What "device" and "reference" mean in each check:

* kernels.py: every fused kernel (reparameterisation, Gaussian KL, Bernoulli, bias + ReLU,
  im2col / col2im, Winograd transforms, batch norm, Adam, the non-finite check) in float32 and
  float64.  On a GPU: the Numba CUDA kernel on CuPy arrays against the Numba CPU twin on the same
  inputs; on the CPU: the CPU twin against the plain-xp reference.  Both sides within the
  kernel's error bound of the float64 reference (or equal to it bit for bit where the kernel only
  copies, compares, or adds in the reference's order), including shapes that make the grid-stride
  kernels take several strides;
* steps.py: one training step (loss, gradients, Adam update) of every MNIST model and of the
  JMVAE family on width-scaled 32-pixel CelebA nets, on the device, against the same step in
  float64 on NumPy (same initial parameters, batch and noise).  On a GPU in float32 and float64
  (the float64 comparison is the tight one); on the CPU in float32 (float32 against float64 is
  all a CPU can compare: the float64 step is the reference itself);
* hostsync.py and steps.py: no host round trip inside a step.  Everywhere the trap (NumPy arrays
  that raise on any conversion to host data); on a GPU also CuPy's synchronisation detection with
  GPU work queued ahead of the step, which catches a wait through Numba or an event too;
* steps.py: the memory a step holds at its peak (CuPy's pool; NumPy's allocations on the CPU);
* training.py: train two epochs, resume, evaluate, through the commands' own entry points.

The kernels' inputs and bounds are the kernel tests' too (tests/kernels/).
"""
