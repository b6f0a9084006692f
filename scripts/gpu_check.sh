#!/usr/bin/env bash
# The prepared GPU check: one command on a machine with a CUDA GPU (H100/H200 class), from the repository
# root, with a CUDA build of torch, triton, nvcc, setuptools, wheel, ninja and pybind11 already installed
# (nothing is downloaded):
#
#   bash scripts/gpu_check.sh            # build, GPU tests, benchmark suite -> benchmarks/results/gpu/
#   bash scripts/gpu_check.sh --dry-run  # CPU: check that every step is wired (CI); writes to a temp dir
#
# Steps: (1) environment, (2) build ddk_fast._C with its CUDA kernels, (3) the GPU tests (pytest -m gpu),
# (4) the bf16 benchmark suite (benchmarks/gpu_suite.py) writing results.json / results.md / results.png
# with every target met or missed. Each step has a time limit; a failed step is reported and the next
# ones still run (the exit status says whether all passed); the whole check is meant to stay under
# 8 minutes. Options: --dry-run, --out DIR (report folder), --skip-build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python}"
DRY_RUN=0
SKIP_BUILD=0
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $DRY_RUN == 1 ]]; then
  OUT="${OUT:-$(mktemp -d -t ddk_gpu_check.XXXXXX)}"
  export TRITON_INTERPRET=1  # Triton kernels run on CPU tensors in the interpreter
else
  OUT="${OUT:-benchmarks/results/gpu}"
  unset TRITON_INTERPRET
fi
MODE=$([[ $DRY_RUN == 1 ]] && echo "dry run" || echo "gpu")
START=$(date +%s)

step() {  # step NAME LIMIT_S WHAT COMMAND...: run with a time limit, report ok/failed and the seconds taken
  local name="$1" limit="$2" what="$3"; shift 3
  local t0; t0=$(date +%s)
  echo "== [$name] $what"
  if timeout "$limit" "$@"; then
    echo "== [$name] ok ($MODE, $(( $(date +%s) - t0 )) s)"
  else
    local rc=$?
    echo "== [$name] FAILED (exit $rc after $(( $(date +%s) - t0 )) s; limit ${limit} s)"
    FAILED+=("$name")  # the later steps still run: one GPU session should bring back every result it can
  fi
}
FAILED=()

# ---- 1. environment ---------------------------------------------------------------------------------
if [[ $DRY_RUN == 1 ]]; then
  step environment 60 "versions" "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| dry run: no GPU needed')"
else
  step environment 60 "versions and the device" "$PYTHON" -c "
import torch, triton
assert torch.cuda.is_available(), 'torch sees no CUDA device (a CUDA build of torch is needed)'
p = torch.cuda.get_device_properties(0)
print('torch', torch.__version__, '| CUDA', torch.version.cuda, '| triton', triton.__version__)
print('device', p.name, '| sm_%d%d' % (p.major, p.minor), '| %.0f GiB' % (p.total_memory / 2**30))"
fi

# ---- 2. build the extension with its CUDA kernels ----------------------------------------------------
if [[ $DRY_RUN == 1 ]]; then
  # the build description loads and lists every CUDA source; nothing is compiled
  step build 120 "setup.py loads, CUDA sources present (nothing compiled)" "$PYTHON" -c "
import glob, subprocess, sys
cu = sorted(glob.glob('csrc/*.cu'))
assert cu, 'no CUDA sources in csrc/'
out = subprocess.run([sys.executable, 'setup.py', '--version'], capture_output=True, text=True,
                     env={'DDK_FAST_NO_CUDA': '1', **__import__('os').environ})
assert out.returncode == 0, out.stderr
print('setup.py loads (version', out.stdout.strip().splitlines()[-1] + '); CUDA sources:', ', '.join(cu))
print('would run: FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e .')"
elif [[ $SKIP_BUILD == 0 ]]; then
  step build 240 "FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e ." env FORCE_CUDA=1 "$PYTHON" -m pip install --no-build-isolation --no-deps -q -e .
  step build-check 60 "ddk_fast._C loads with its CUDA kernels" "$PYTHON" -c "
from ddk_fast import _ext
assert _ext.extension() is not None, _ext.extension_error()
assert _ext.has_cuda_kernels(), 'ddk_fast._C was built without its CUDA kernels'
print('ddk_fast._C with CUDA kernels')"
fi

# ---- 3. the GPU tests --------------------------------------------------------------------------------
if [[ $DRY_RUN == 1 ]]; then
  step gpu-tests 180 "pytest --collect-only -m gpu tests (collected, not run)" "$PYTHON" -c "
import subprocess, sys
out = subprocess.run([sys.executable, '-m', 'pytest', '-q', '--collect-only', '-m', 'gpu', '-p', 'no:cacheprovider',
                      'tests'], capture_output=True, text=True)
ids = [l for l in out.stdout.splitlines() if '::' in l]
assert out.returncode == 0 and ids, out.stdout[-2000:] + out.stderr[-2000:]
print(len(ids), 'GPU tests collected (not run in a dry run), e.g.', ids[0])"
else
  step gpu-tests 240 "pytest -m gpu tests" "$PYTHON" -m pytest -q -m gpu -p no:cacheprovider tests
fi

# ---- 4. the benchmark suite --------------------------------------------------------------------------
if [[ $DRY_RUN == 1 ]]; then
  step benchmarks 600 "benchmarks/gpu_suite.py --dry-run --out $OUT" "$PYTHON" benchmarks/gpu_suite.py --dry-run --out "$OUT"
else
  step benchmarks 300 "benchmarks/gpu_suite.py --out $OUT" "$PYTHON" benchmarks/gpu_suite.py --out "$OUT"
fi
for f in results.json results.md results.png; do
  [[ -s "$OUT/$f" ]] || FAILED+=("report: $OUT/$f missing")
done
if [[ ${#FAILED[@]} -gt 0 ]]; then
  echo "== gpu_check FAILED ($MODE) in $(( $(date +%s) - START )) s: ${FAILED[*]}"
  exit 1
fi
echo "== [report] ok ($MODE): $OUT/results.json, results.md, results.png"
echo "== gpu_check done ($MODE) in $(( $(date +%s) - START )) s"
