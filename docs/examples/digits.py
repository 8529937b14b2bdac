"""Write scikit-learn's bundled digits as a paired data file for jmvae_cupy (docs/data.md).

    pip install -e ".[examples]"                  # scikit-learn: the 1,797 digits ship inside it
    python docs/examples/digits.py --out digits.h5

x: the 8x8 images, (1797, 1, 8, 8), grey levels 0..16 divided by 16 (in [0, 1]); w: the digit,
one-hot (1797, 10), named "0".."9"; no split (train takes a fixed-seed 90/10 split).  Nothing is
downloaded: the data ship with scikit-learn (Alpaydin & Kaynak, UCI "Optical Recognition of
Handwritten Digits", CC BY 4.0).
"""

import argparse
import sys

import numpy as np

from jmvae_cupy.data.paired import write_paired


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the .h5 (or .npz) file to write")
    args = p.parse_args(argv)
    try:
        from sklearn.datasets import load_digits  # noqa: PLC0415  (the examples extra: a one-line error without it)
    except ImportError:
        print("error: scikit-learn is not installed (pip install -e \".[examples]\")", file=sys.stderr)
        return 1
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]        # (N, 1, 8, 8) in [0, 1]
    w = np.eye(10, dtype=np.float32)[d.target]              # (N, 10) one-hot
    write_paired(args.out, x, w, w_names=[str(k) for k in range(10)])
    print(f"wrote {args.out}: {len(x)} digits, x {x.shape[1:]}, w {w.shape[1:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
