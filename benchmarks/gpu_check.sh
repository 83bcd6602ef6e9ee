#!/usr/bin/env bash
# The GPU check, in one command on a machine with an NVIDIA GPU (about 8 minutes on one, each
# step under its own limit; the install comes on top when the wheels are not there yet):
#   install minigen with its cuda extra, run `pytest -m cuda` on the GPU, run the CUDA kernel
#   tests under compute-sanitizer (memcheck; racecheck for the pooling kernels), time
#   bench_conv, bench_ddpm and bench_gan on --device cuda against PyTorch (TF32 off on both
#   sides), and print a short table last. CI proves the same code on the CPU (tests/cuda_on_cpu/);
#   this is what only a GPU can show.
#
#   bash benchmarks/gpu_check.sh               # install into the active Python, then check
#   GPU_CHECK_INSTALL=0 bash benchmarks/gpu_check.sh    # skip the install
#
# Every step runs under its own time limit; a failing step is reported in the table and the
# script goes on. The exit status is 0 only when every step passed.
set -uo pipefail

cd "$(dirname "$0")/.."
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg CUPY_TF32=0
PYTHON=${PYTHON:-python3}
log_dir=$(mktemp -d "${TMPDIR:-/tmp}/minigen-gpu-check.XXXXXX")
rows=()
failed=0

# step NAME LIMIT_SECONDS SUMMARY_COMMAND -- COMMAND...: run COMMAND with a time limit, keep its
# output in $log_dir/NAME.log, and add a table row with SUMMARY_COMMAND's one line of output.
step() {
    local name=$1 limit=$2 summary=$3
    shift 4
    local log="$log_dir/$name.log" start status result
    echo "== $name: $*"
    start=$(date +%s)
    timeout "$limit" "$@" >"$log" 2>&1
    status=$?
    tail -n 15 "$log"
    if [ "$status" -eq 0 ]; then result=passed
    elif [ "$status" -eq 124 ]; then result="timed out (${limit} s)"; failed=1
    else result="failed ($status)"; failed=1; fi
    rows+=("$(printf '%-22s %-20s %5ss  %s' "$name" "$result" "$(( $(date +%s) - start ))" \
              "$(bash -c "$summary" <"$log" 2>/dev/null | tail -n 1)")")
}

skip() {
    rows+=("$(printf '%-22s %-20s %5s   %s' "$1" "skipped" "-" "$2")")
}

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: no NVIDIA GPU here (nvidia-smi fails); CI runs the CPU proof instead" >&2
    exit 2
fi
cuda_major=$(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p' | head -n 1)
extra=cuda
[ "${cuda_major:-12}" -ge 13 ] && extra=cuda13
gpu=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader | head -n 1)

if [ "${GPU_CHECK_INSTALL:-1}" != 0 ]; then
    step install 300 "echo \"minigen[dev,$extra]\"" -- \
        "$PYTHON" -m pip install --quiet -e ".[dev,$extra]"
else
    skip install "GPU_CHECK_INSTALL=0"
fi

step cuda-status 30 "cat" -- "$PYTHON" -c \
    "from minigen import backend; s = backend.cuda_status(); print(s or 'CUDA usable'); raise SystemExit(s is not None)"

# The CPU runner's sanitized pass is CI's job; here every other CUDA test runs on the GPU.
step pytest-cuda 100 "grep -E '(passed|failed)'" -- \
    "$PYTHON" -m pytest -q -m cuda -k "not sanitizer" -p no:xdist -p no:cacheprovider

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
if [ -n "$sanitizer" ]; then
    step memcheck 100 "grep -E '(passed|failed|ERROR SUMMARY)'" -- \
        "$sanitizer" --tool memcheck --error-exitcode 1 --target-processes all \
        "$PYTHON" -m pytest -q -p no:xdist -p no:cacheprovider tests/test_kernels_cuda.py -k "float32"
    step racecheck-pooling 50 "grep -E '(passed|failed|RACECHECK SUMMARY)'" -- \
        "$sanitizer" --tool racecheck --error-exitcode 1 --target-processes all \
        "$PYTHON" -m pytest -q -p no:xdist -p no:cacheprovider tests/test_kernels_cuda.py -k "pool and float32"
else
    skip memcheck "compute-sanitizer not found (it comes with the CUDA toolkit)"
    skip racecheck-pooling "compute-sanitizer not found"
fi

step kernel-resources 20 "awk 'NR>1 {r = \$3 > r ? \$3 : r; s += \$5 + \$6} END {print \"max registers\", r, \"spill bytes\", s}'" -- \
    "$PYTHON" benchmarks/kernel_resources.py
step bench-conv 60 "awk 'NF >= 7 && \$NF ~ /^[0-9.]+\$/ {s += log(\$NF); n++} END {if (n) printf \"f+b ratio %.2f (geometric mean of %d shapes)\\n\", exp(s / n), n}'" -- \
    "$PYTHON" benchmarks/bench_conv.py --device cuda
step bench-ddpm 70 "grep -E 'training step' | tail -n 1 | sed 's/  */ /g'" -- \
    "$PYTHON" benchmarks/bench_ddpm.py --device cuda --gpu-only
step bench-gan 50 "grep -E 'ratio'" -- \
    "$PYTHON" benchmarks/bench_gan.py --device cuda --image-size 32 --width 64 --batch-size 128 --steps 10

echo
echo "GPU check on $gpu (driver CUDA $cuda_major), logs in $log_dir"
printf '%-22s %-20s %6s  %s\n' step result time "key line"
printf '%s\n' "${rows[@]}"
exit "$failed"
