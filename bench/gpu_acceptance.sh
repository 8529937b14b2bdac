#!/usr/bin/env bash
# The GPU acceptance run: everything this project can only check on a GPU, in one go, on a fresh
# machine without network, every log and JSON into OUTDIR.
#
#   bash bench/gpu_acceptance.sh OUTDIR [--quick]
#
# Steps (each one's output goes through tee to OUTDIR/<step>.log as it comes, so that a run cut off
# by a time limit still leaves what it printed; PYTHONUNBUFFERED=1):
#   env        versions (Python, NumPy, Numba, numba-cuda, CuPy, PyTorch, h5py), nvidia-smi -L
#   install    jmvae_cupy importable as it is; else pip install --no-deps --no-build-isolation -e .;
#              else run from the tree (a link jmvae_cupy/kernels -> ../kernels, removed at exit)
#   imports    every module of the package imports
#   cuda       CuPy sees a CUDA device (else: one line "no CUDA device: ..." and exit 3, here)
#   selftest   python -m jmvae_cupy.selftest --device gpu --json OUTDIR/selftest.json [--quick]
#   gpu-tests  at the same time as the selftest (both are mostly compilation, on one core each; its
#              output goes to its log alone): the tests that run only on a GPU,
#              tests/kernels/test_cupy_dispatch.py, the CuPy tests of tests/test_backend.py, the
#              NCCL cases of tests/test_distributed.py (1 rank) and the GPU cases of
#              tests/test_selftest.py (JUnit XML: OUTDIR/gpu-tests.xml)
#   throughput bench/throughput.py --device gpu --json against PyTorch CUDA on the same models and
#              batch sizes (OUTDIR/throughput.json): the default 7 (model, batch) pairs; --quick:
#              MNIST JMVAE-kl at 100, 8 steps
#   conv       bench/conv.py --device gpu, the CelebA conv encoder / decoder against PyTorch CUDA
#              (not with --quick)
# OUTDIR/steps.tsv: each step's exit status and seconds; the exit status is 1 if any step failed.
#
# Time budget, one H100, the compilations included: 8 minutes (480 s), --quick 3 (180 s).  The
# script keeps to it: every step runs under `timeout` with its own cap, cut to what is left of the
# budget, and a step that would start with under 10 s left is skipped and says so.  No GPU has run
# it yet; the estimate the caps come from (seconds, full / quick), from this project's 2-core CPU
# where a part runs there, from the work counted where it does not:
#   env, install, imports, cuda                    15 / 15   imports of CuPy, Numba, PyTorch: 5-10 s
#   selftest                                      170 / 135  Numba compiles on one core, with no cache
#       on a fresh machine: the CPU twins (measured: the kernel checks with an empty cache take 55 s
#       here against 1 s warm; a server core ~35 s) and 32 CUDA specialisations (measured: 64 PTX
#       compilations in 17 s here, ~0.3 s each, plus the driver's PTX to SASS: ~15 s); CuPy compiles
#       each element-wise kernel and reduction per dtype with NVRTC on first use, ~150-250 of them at
#       0.1-0.2 s (25-50 s; cached on disk for the later processes); the work itself: the float64
#       NumPy reference steps (10-20 of them, 0.1-0.5 s on 16 cores), training 6 epochs of 80 steps
#       (quick: 2 + 1 epochs of 20) at ~20 ms a step plus the test set and a 37 MB checkpoint per
#       epoch, memory and sync checks: ~60 s (quick 25 s)
#   gpu-tests                                      60 / 60   beside the selftest, so free of time
#       but for its share of the GPU
#   throughput                                    150 / 20   per (model, batch) 3 worker processes,
#       each importing CuPy or PyTorch and compiling (CuPy's cache is warm by then; Numba's CUDA
#       kernels are compiled again in each process, ~10 s): ~20 s; 7 pairs (quick: 1); the timed
#       steps themselves take milliseconds
#   conv                                           45 / -    2 nets x 2 workers, compilation and
#       cuDNN set-up, 24 steps each
#   total                                         380 / 170
# Replace these with the seconds in OUTDIR/steps.tsv once the script has run on a GPU.
#
# Python: $PYTHON if set, else python3 (on the lent GPU machines the one that holds PyTorch).

set -u -o pipefail

usage() { echo "usage: bash bench/gpu_acceptance.sh OUTDIR [--quick]" >&2; exit 2; }
OUT="" QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h|--help) usage ;;
        -*) echo "error: unknown option $arg" >&2; usage ;;
        *) [ -z "$OUT" ] || usage; OUT=$arg ;;
    esac
done
[ -n "$OUT" ] || usage
mkdir -p "$OUT" 2>/dev/null || { echo "error: cannot create the output directory $OUT" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
: > "$OUT/steps.tsv"
LINK=""
trap '[ -n "$LINK" ] && rm -f "$LINK"' EXIT

BUDGET=$([ "$QUICK" = 1 ] && echo 180 || echo 480)

# cap FULL QUICK: this step's cap in seconds, cut to what is left of the budget (0: nothing left)
cap() {
    local want left=$((BUDGET - SECONDS))
    want=$([ "$QUICK" = 1 ] && echo "$2" || echo "$1")
    [ "$left" -ge 10 ] || { echo 0; return; }
    echo $((want < left ? want : left))
}

# step NAME CAP COMMAND...: run COMMAND for at most CAP seconds with its output teed into
# OUT/NAME.log (and the terminal, unless QUIET=1); record its exit status (124 / 137: stopped at
# the cap) and its seconds in OUT/steps.tsv.
step() {
    local name=$1 secs=$2 start=$SECONDS rc
    shift 2
    if [ "$secs" = 0 ]; then
        echo "== $name: skipped, the ${BUDGET} s budget is spent"
        printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
        return 1
    fi
    echo "== $name (at most ${secs} s): ${*%%$'\n'*}"
    if [ "${QUIET:-0}" = 1 ]; then
        timeout --kill-after=10 "$secs" "$@" > "$OUT/$name.log" 2>&1
        rc=$?
    else
        timeout --kill-after=10 "$secs" "$@" 2>&1 | tee "$OUT/$name.log"
        rc=${PIPESTATUS[0]}
    fi
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then echo "$name: stopped at its cap of ${secs} s"; fi
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$OUT/steps.tsv"
    return "$rc"
}

step env "$(cap 30 30)" "$PY" - <<'EOF'
import importlib, platform, shutil, subprocess, sys
print("python", platform.python_version(), sys.executable)
for name in ("numpy", "numba", "numba_cuda", "cupy", "torch", "h5py", "PIL", "mpi4py", "pytest"):
    try:
        mod = importlib.import_module(name)
        print(f"{name:10s}", getattr(mod, "__version__", "(no __version__)"))
    except Exception as e:  # a missing or broken package: said, and the run goes on
        print(f"{name:10s} not importable: {type(e).__name__}: {' '.join(str(e).split())[:160]}")
smi = shutil.which("nvidia-smi")
print("nvidia-smi:", subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip() if smi else "not found")
EOF

# install: the package's kernels (kernels/, shipped as jmvae_cupy.kernels) must import
importable() { "$PY" -c "import jmvae_cupy.kernels" >/dev/null 2>&1; }
install() {
    if importable; then
        echo "jmvae_cupy importable as installed: $("$PY" -c 'import jmvae_cupy; print(jmvae_cupy.__file__)')"
        return 0
    fi
    if "$PY" -m pip --version >/dev/null 2>&1 && "$PY" -m pip install --no-deps --no-build-isolation -e . \
            && importable; then
        echo "installed with pip install --no-deps --no-build-isolation -e ."
        return 0
    fi
    echo "pip could not install the checkout: running from the tree (jmvae_cupy/kernels -> ../kernels)"
    ln -s ../kernels jmvae_cupy/kernels && importable
}
export PY
export -f importable install
[ -e jmvae_cupy/kernels ] || LINK="$REPO/jmvae_cupy/kernels"  # (removed at exit if the install makes it)
step install "$(cap 60 60)" bash -c install || { echo "error: jmvae_cupy cannot be imported here ($OUT/install.log)"; exit 1; }
[ -L "$REPO/jmvae_cupy/kernels" ] || LINK=""

step imports "$(cap 30 30)" "$PY" -c "
import importlib, pkgutil, jmvae_cupy, jmvae_cupy.kernels as k
names = [m.name for p, prefix in ((jmvae_cupy, 'jmvae_cupy.'), (k, 'jmvae_cupy.kernels.'))
         for m in pkgutil.walk_packages(p.__path__, prefix) if not m.name.endswith('__main__')]
for name in names:
    importlib.import_module(name)
print(f'{len(names)} modules of jmvae_cupy import')
" || { echo "error: a module of the package does not import ($OUT/imports.log)"; exit 1; }

# cuda: the reason when there is none, in one line
REASON=$("$PY" -c "
from jmvae_cupy import backend
cp = backend.cupy_module()
if cp is None:
    print('CuPy does not import (pip install -e \".[cuda13]\" or \".[cuda12]\")')
elif not backend.gpu_available():
    try:
        n = cp.cuda.runtime.getDeviceCount()
        print(f'CuPy {cp.__version__} sees {n} devices')
    except Exception as e:
        print(f'CuPy {cp.__version__}: ' + ' '.join(str(e).split())[:200])
" 2>&1 | tail -1)
printf 'cuda\t%s\t0\n' "$([ -n "$REASON" ] && echo 3 || echo 0)" >> "$OUT/steps.tsv"
if [ -n "$REASON" ]; then
    echo "$REASON" > "$OUT/cuda.log"
    echo "no CUDA device: $REASON; the environment and imports were checked, the GPU checks did not run (logs in $OUT)"
    exit 3
fi

Q=(); [ "$QUICK" = 1 ] && Q=(--quick)
SELFTEST_CAP=$(cap 240 130)
QUIET=1 step gpu-tests "$SELFTEST_CAP" "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/gpu-tests.xml" \
    tests/kernels/test_cupy_dispatch.py tests/test_backend.py tests/test_distributed.py tests/test_selftest.py \
    -k "test_cupy_dispatch or cupy or pinned or nccl or gpu" &
TESTS=$!
step selftest "$SELFTEST_CAP" "$PY" -m jmvae_cupy.selftest --device gpu --json "$OUT/selftest.json" "${Q[@]}"
wait "$TESTS"
echo "== gpu-tests ($OUT/gpu-tests.log):"
tail -n 15 "$OUT/gpu-tests.log"

if [ "$QUICK" = 1 ]; then
    TP=(--models mnist:kl --batch-sizes 100 --steps 8 --blocks 2)
else
    TP=()
fi
export JSON_OUT="$OUT/throughput.json"  # (the JSON alone: the log gets the progress lines on stderr)
step throughput "$(cap 170 35)" sh -c 'exec "$@" > "$JSON_OUT"' sh "$PY" bench/throughput.py --device gpu --json "${TP[@]}"
[ "$QUICK" = 1 ] || step conv "$(cap 60 0)" "$PY" bench/conv.py --device gpu

echo "== steps (name, exit status, seconds; ${SECONDS} s in all):"
cat "$OUT/steps.tsv"
awk -F '\t' '$2 != "0" { bad = 1 } END { exit bad }' "$OUT/steps.tsv"
