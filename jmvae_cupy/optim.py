"""Adam (Kingma & Ba, 2014, Algorithm 1), hand-rolled.

Conventions, written down because libraries differ on them:

* the step counter ``t`` starts at 0 and is incremented *before* use: the first step uses t = 1;
* moments start at zero:  m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2;
* bias correction on both moments:  m_hat = m / (1 - b1^t),  v_hat = v / (1 - b2^t);
* eps sits *outside* the square root, added to sqrt(v_hat):
      p <- p - lr * m_hat / (sqrt(v_hat) + eps)
  (as in the paper and in PyTorch; TensorFlow's "epsilon hat" puts it elsewhere);
* the update *descends*: pass the gradient of the quantity to minimise (the negative bound);
* numbers too small to matter are flushed to 0, so that the update never computes on subnormal
  numbers (below ``finfo.tiny``), which x86 CPUs handle ~100x slower: a moment below
  ``tiny / eps`` (9.9e-32 in float32) is stored as 0 and a gradient below
  ``sqrt(2 tiny / (1 - beta2))`` (4.9e-18) counts as 0.  Without it, the moments of a parameter
  with no gradient for a few hundred steps (a dead unit) decay into them (kernels/adam.py derives
  the thresholds and bounds what they change).  ``flush_subnormals=False`` runs Algorithm 1 as is.

The state (t, m, v, hyper-parameters) saves and restores exactly: ``state_dict`` /
``load_state_dict``.  Derivation: docs/derivations/adam.md.  Checked by tests/test_optim.py.
"""

from __future__ import annotations

from .backend import get_array_module
from .kernels.adam import adam_update


class Adam:
    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 flush_subnormals: bool = True):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {beta1}, {beta2}")
        self.lr, self.beta1, self.beta2, self.eps = float(lr), float(beta1), float(beta2), float(eps)
        self.flush_subnormals = bool(flush_subnormals)  # a speed setting of this object, not saved state
        self.t = 0
        self.m: dict = {}
        self.v: dict = {}

    def step(self, params: dict, grads: dict) -> None:
        """One Adam step, in place on every ``params[name]`` that has a ``grads[name]``."""
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        # Fold both bias corrections into one step size (same numbers as the 4-line form up to
        # rounding):  p -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps * sqrt(1-b2^t))
        c1 = 1.0 - b1**self.t
        c2 = 1.0 - b2**self.t
        step_size = self.lr * (c2**0.5) / c1
        eps_hat = self.eps * (c2**0.5)
        for name, g in grads.items():
            p = params[name]
            if name not in self.m:
                xp = get_array_module(p)
                self.m[name] = xp.zeros_like(p)
                self.v[name] = xp.zeros_like(p)
            # m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  p <- p - lr m_hat / (sqrt(v_hat) + eps),
            # in one fused pass (kernels/adam.py; adam_update_ref there is the same in plain xp)
            adam_update(p, g, self.m[name], self.v[name], b1, b2, step_size, eps_hat, self.flush_subnormals)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: hyper-parameters, t, and the moments (arrays)."""
        return {
            "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "t": self.t,
            "m": dict(self.m), "v": dict(self.v),
        }

    def load_state_dict(self, state: dict) -> None:
        self.lr, self.beta1, self.beta2, self.eps = (float(state[k]) for k in ("lr", "beta1", "beta2", "eps"))
        self.t = int(state["t"])
        self.m = dict(state["m"])
        self.v = dict(state["v"])
