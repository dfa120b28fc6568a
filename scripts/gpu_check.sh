#!/usr/bin/env bash
# Every check of issues 5 and 6 that needs a CUDA GPU, as one prepared run for a session lent a
# device machine (see ../.library/device/README.md: 15 minutes of device time, one script).
#
# Here, once, on the machine without a GPU (needs the package registry):
#     bash scripts/gpu_check.sh --fetch-wheels
#   downloads, into .whl/ (ignored by git), the wheels the device image lacks for Python 3.12:
#   py-lmdb, plyvel and a protobuf new enough for datakit/formats/caffe_pb2.py.
# On the device machine, from the repository root (device `run`, carry [".whl"], timeout ~540 s):
#     bash scripts/gpu_check.sh
#   installs those wheels under /tmp/site, then runs, each into its own log under $OUT
#   (or gpu-check-out/), and prints the end of each log:
#     1. env      what python3, CuPy, torch, lmdb and protobuf are there, and the GPU
#     2. kernels  pytest -m gpu: every CUDA kernel against its NumPy twin, and a whole net GPU vs CPU
#     3. bench    benchmarks.bench_caffenet_time --gpu-only: our images/s vs PyTorch on the same GPU
#                 (target >= 0.5); bench_tf32 the same with CUPY_TF32=1 (TF32 GEMMs, as PyTorch's
#                 cuDNN convolutions use by default)
#     4. demo     python3 -m scripts.demo --device gpu: the whole story with training, test and classify on CuPy
#   summary.txt has one line per step: its name and exit status.
# Record what it prints, with the device's name, in benchmarks/RESULTS.md (caffenet_time, data_layer).
set -u

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
        lmdb==3.0.0 plyvel==1.5.1 protobuf==7.36.2
fi

OUTDIR="${1:-${OUT:-gpu-check-out}}"
mkdir -p "$OUTDIR"
: > "$OUTDIR/summary.txt"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_check: installing .whl/*.whl failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# The demo runs `datakit` and `trainer` as a user types them; without an install they are these two shims.
shims="$(mktemp -d)"
for name in datakit trainer; do
    printf '#!/bin/sh\nexec python3 -m cli.%s_main "$@"\n' "$name" > "$shims/$name"
    chmod +x "$shims/$name"
done
command -v datakit > /dev/null || export PATH="$shims:$PATH"

step() {  # step NAME COMMAND...: run it into NAME.log, show the end, record the exit status
    local name="$1"; shift
    echo "== $name: $*"
    local started=$SECONDS
    "$@" > "$OUTDIR/$name.log" 2>&1
    local status=$?
    tail -n 25 "$OUTDIR/$name.log"
    echo "   ($name: exit $status, $((SECONDS - started)) s)"
    echo "$name $status" >> "$OUTDIR/summary.txt"
}

step env python3 - <<'PY'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "torch", "cv2", "lmdb", "plyvel", "h5py", "google.protobuf"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as err:  # noqa: BLE001 - report and go on
        print(name, "MISSING:", err)
from trainer import backend
print("gpu available:", backend.gpu_available(), backend.gpu_unavailable_reason())
if not backend.gpu_available():
    raise SystemExit("no usable GPU: every later step will skip or fail")
import cupy
props = cupy.cuda.runtime.getDeviceProperties(0)
print("device:", props["name"].decode(), f"{props['totalGlobalMem'] / 2**30:.0f} GiB")
PY
step kernels python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_kernels.py
step bench python3 -m benchmarks.bench_caffenet_time --gpu-only --batches 64,256 --gpu-iterations 20
# PyTorch's cuDNN convolutions use TF32 tensor cores by default (torch.backends.cudnn.allow_tf32);
# CuPy's matrix products (our convolutions are im2col + GEMM) do only with CUPY_TF32=1. Both figures:
step bench_tf32 env CUPY_TF32=1 python3 -m benchmarks.bench_caffenet_time --gpu-only --batches 64,256 --gpu-iterations 20
rm -f demo-out/curves.png
step demo python3 -m scripts.demo --device gpu
[ -f demo-out/curves.png ] && cp demo-out/curves.png "$OUTDIR/demo_curves.png"
echo "== summary"; cat "$OUTDIR/summary.txt"
! grep -qv ' 0$' "$OUTDIR/summary.txt"
