"""Train a JMVAE model:  python -m jmvae_cupy.train mnist --variant kl
(or ``celeba --variant kl --data celeba.h5``, a file made by ``python -m jmvae_cupy.data prepare celeba``;
or ``data --data PAIRS.h5 [--config MODEL.toml]``, pairs of your own: docs/data.md)

The model is described by a model config (jmvae_cupy/models/config.py): ``--config FILE``, or the
built-in one of mnist / celeba (jmvae_cupy/configs/), or for ``data`` the one inferred from the
file; keys a --config leaves out come from that default.  Options given on the command line
(--variant, --latent, --epochs, ...) override the config.

Writes into the run directory (``--out``, default ``runs/<dataset>-<variant>``):

* ``config.json``       the configuration of the run, with "model": its architecture, likelihoods and
  shapes in full (so evaluate and generate rebuild it from the run alone);
* ``metrics.jsonl``     one JSON line per epoch: train and test terms, beta, seconds;
* ``ckpt-EEEEEE-SSSSSS.h5``  checkpoints (the newest two; format in docs/checkpoint.md);
* ``samples-eEEEE.png`` images generated from each label 0-9 (a column per label); CelebA: row 0
  test faces, rows 1.. faces generated from their 40 attributes.

``--resume`` continues from the newest good checkpoint; on the CPU the result is bit-identical
to an uninterrupted run (the data order, the binarisation and the noise all come from RNG
streams whose states are checkpointed).  Ctrl-C / SIGTERM save a checkpoint at the next step
boundary and exit with code 130.  Every error a user can cause (and a full disk, an allocation
that fails, Ctrl-C before training starts) is one line on stderr, exit 1 (130 for Ctrl-C).  One
process at a time trains in a run directory (it holds ``.lock``).

``--micro-batches K`` runs each step's batch as K chunks of B/K rows, one after the other, and
averages them (gradient accumulation); ``mpiexec -n P ... --distributed`` splits it over P ranks.
Both go through ``distributed.StepMean`` (docs/distributed.md); without them a step is one
``loss_and_grads`` call on the whole batch.

The package: step.py (one training step), trainer.py (the Trainer and its loop), sources.py (the
data), rundir.py (the run directory and its files), cli.py (the command), errors.py.
"""

from .cli import USER_ERRORS, build_parser, config_from_args, main
from .errors import NonFiniteError, TrainError
from .sources import MnistSource, make_source
from .step import beta_at, check_finite, train_step
from .trainer import RESUME_KEYS, Trainer

__all__ = ["RESUME_KEYS", "USER_ERRORS", "MnistSource", "NonFiniteError", "TrainError", "Trainer", "beta_at",
           "build_parser", "check_finite", "config_from_args", "main", "make_source", "train_step"]
