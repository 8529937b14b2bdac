"""One training step, as every run takes it (:func:`train_step`):

    loss, terms, grads = gradients(x, w, beta)   # forward and backward: the terms and every gradient
    check_finite(loss, terms, grads)             # a NaN / inf stops here, before it reaches a parameter
    update(grads)                                # Adam

For one process ``gradients`` is the model's ``loss_and_grads`` with the step's noise and ``update``
Adam's step on the model's parameters:

    train_step(lambda x, w, beta: model.loss_and_grads(x, w, rng, beta=beta),
               lambda grads: opt.step(model.params, grads), x, w, beta)

The Trainer passes its own (trainer.py): ``gradients`` the mean over micro-batches and ranks
(distributed.StepMean) with the VAE-GAN's terms added, ``update`` Adam with the discriminator's own
Adam beside it.  ``beta`` rises over the warm-up epochs (:func:`beta_at`)."""

from __future__ import annotations

from ..kernels.finite import all_finite
from .errors import NonFiniteError


def beta_at(epoch_float: float, warmup: float) -> float:
    """Warm-up: beta rises linearly from 0 to 1 over the first ``warmup`` epochs (per step)."""
    return 1.0 if warmup <= 0 else min(1.0, epoch_float / warmup)


def check_finite(loss, terms: dict, grads: dict, where: str = "") -> None:
    """NonFiniteError if the loss, a term or a gradient element is NaN or inf (``where``: the step, for
    the message).  One pass over the gradients and, on a GPU, one host read: a single flag for all of
    them (kernels/finite.py); the culprits are looked up only on failure."""
    if all_finite([loss, *terms.values(), *grads.values()]):
        return
    at = f" at {where}" if where else ""
    if not all_finite([loss, *terms.values()]):
        bad = [k for k, v in terms.items() if not all_finite([v])]
        raise NonFiniteError(f"non-finite objective{at} (terms: {', '.join(bad) or 'loss'})")
    bad = [k for k, g in grads.items() if not all_finite([g])]
    raise NonFiniteError(f"non-finite gradient{at} (parameters: {', '.join(bad[:5])})")


def train_step(gradients, update, x, w, beta: float, where: str = ""):
    """One training step on the batch x (N, *x_shape), w (N, w_dim) at KL weight ``beta``; returns (loss,
    terms), the loss and the objective's terms as 0-d device arrays.  ``gradients(x, w, beta)`` ->
    (loss, terms, grads) and ``update(grads)`` (see the module docstring)."""
    loss, terms, grads = gradients(x, w, beta)   # forward and backward: the terms and every gradient
    check_finite(loss, terms, grads, where)      # a NaN / inf stops here, before it reaches a parameter
    update(grads)                                # Adam
    return loss, terms
