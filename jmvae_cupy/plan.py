"""The reproduction plan (jmvae_cupy/reproduce.py): its runs per dataset, where each run lives, and
the hash of the settings its evaluations record; shared by reproduce (the command), plan_eval (one
run evaluated) and report (the figures and the report)."""

from __future__ import annotations

import hashlib
import json
import os

# (name, train arguments): the runs of Table 1, shared by every dataset
TABLE1_PLAN = [
    ("jmvae", ["--variant", "jmvae"]),
    ("kl", ["--variant", "kl"]),
    ("h", ["--variant", "h"]),
    ("cvae-label2image", ["--variant", "cvae", "--direction", "label2image"]),
    ("cvae-image2label", ["--variant", "cvae", "--direction", "image2label"]),
    ("cmma-label2image", ["--variant", "cmma", "--direction", "label2image"]),
    ("cmma-image2label", ["--variant", "cmma", "--direction", "image2label"]),
]
# MNIST: also the second reading of JMVAE-h's top layer, and Fig. 3's z = 2 models
MNIST_PLAN = TABLE1_PLAN[:3] + [("h-z1top", ["--variant", "h", "--h-top", "z1"])] + TABLE1_PLAN[3:] + [
    ("jmvae-z2", ["--variant", "jmvae", "--latent", "2"]),
    ("kl-z2", ["--variant", "kl", "--latent", "2"]),
    ("h-z2", ["--variant", "h", "--latent", "2"]),
]
CELEBA_PLAN = TABLE1_PLAN + [("kl-gan", ["--variant", "kl", "--gan"])]  # and Fig. 7's VAE-GAN
DATA_PLAN = TABLE1_PLAN  # pairs of your own (train data --data FILE)
PLANS = {"mnist": MNIST_PLAN, "celeba": CELEBA_PLAN, "data": DATA_PLAN}
CHAIN_KS = (0, 1, 2, 5, 10, 20)  # Fig. 4's rows (MNIST)
# warm-up over this fraction of the epochs: the paper's 200 of 2,000 (MNIST), 20 of 50 (CelebA)
WARMUP = {"mnist": 0.1, "celeba": 0.4, "data": 0.1}


def dataset_of(s: dict) -> str:
    return s.get("dataset", "mnist")


def run_dir(out: str, name: str, dataset: str = "mnist") -> str:
    return os.path.join(out, f"{dataset}-{name}")


def settings_hash(s: dict) -> str:
    return hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:12]
