#!/usr/bin/env bash
# Every GPU check in one go, on a machine with an NVIDIA GPU (run from the repository root):
#
#   make venv && bash loadtest/gpu_check.sh [OUT]      # OUT defaults to artifacts/gpu-check/<time>
#
# `make venv` installs the `gpu` extra when nvidia-smi sees a GPU; PYTHON=... points at another interpreter
# (the data folder must hold LastFM.txt: $SSI_DATA_DIR, else ./data, else ../shared/data). Steps, each one logged into OUT, the next one run even when one fails:
#   1. the GPU and what the CUDA-capable packages see (ORT providers, FAISS GPUs, torch);
#   2. the GPU tests (pytest -m gpu);
#   3. a smoke reproduction on CUDA (LastFM: HGN, the three teachers, SSI-HGN), exported for serving;
#   4. the serving benchmark on the CUDA path: floor / naive / ours at p99 <= 10 ms, and a batch-size
#      sweep of ours (max_batch_size 1 = no dynamic batching), with the load generator pinned to CPU 0
#      (--loadgen-cpus) and no process-scaling table (--scaling ''; one GPU: the CPU table is the one that
#      matters). On CUDA the batches run on the worker thread (batching_mode auto), idle dispatch on; the
#      CPU scoring choice (--scoring / matmul) does not apply: the FAISS GPU index ranks the catalogue;
#   5. the catalogue-scale benchmark's GPU variants (python -m loadtest.scale, issue 27): FAISS GpuIndexFlatIP,
#      GPU IVF-Flat and GPU IVF-PQ (built and trained on GPU 0, nprobe swept) beside the CPU IndexFlatIP, at 10^6
#      and 10^7 items of the smoke artifact's width, its real test histories as queries; results in OUT.
# Exit status 0 when every step passed. About 11-13 minutes on one H100.
set -uo pipefail
OUT=${1:-artifacts/gpu-check/$(date +%Y%m%dT%H%M%S)}
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
failed=()
step() { echo; echo "== $*"; }

step "1/5 GPU and packages"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PYTHON" - <<'PY' 2>&1 | tee -a "$OUT/gpu.txt" || failed+=(packages)
import onnxruntime as ort

from serving.backends import cuda_status

print("onnxruntime", ort.__version__, ort.get_available_providers())
print("cuda_status", cuda_status())
try:
    import torch
    print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
except ImportError:
    print("torch: not installed")
PY

step "2/5 GPU tests"
"$PYTHON" -m pytest -q -m gpu tests 2>&1 | tee "$OUT/pytest-gpu.txt" || failed+=(gpu-tests)

step "3/5 smoke reproduction on CUDA"
"$PYTHON" training/run_all.py --preset smoke --datasets lastfm --device cuda --models hgn ssi_hgn \
    --out "$OUT/runs" --export-out "$OUT/serving" 2>&1 | tee "$OUT/train.txt" || failed+=(train)

step "4/5 serving benchmark, CUDA path"
"$PYTHON" -m loadtest.bench --artifact "$OUT/serving" --device cuda --p99-limit-ms 10 \
    --batch-sweep 1,8,32,128 --step-seconds 5 --no-levers --loadgen-cpus 0 --scaling '' \
    --results "$OUT" --work-dir "$OUT/bench-raw" \
    2>&1 | tee "$OUT/bench.txt" || failed+=(bench)

step "5/5 catalogue scale, FAISS GPU indexes"
"$PYTHON" -m loadtest.scale --artifact "$OUT/serving" --sizes 1e6,1e7 --kinds flat,gpu-flat,gpu-ivf,gpu-ivfpq \
    --threads "$(nproc)" --cell-seconds 2 --batch-seconds 1 --max-build-s 300 --results "$OUT" \
    2>&1 | tee "$OUT/scale.txt" || failed+=(scale)

echo
if [ ${#failed[@]} -eq 0 ]; then echo "GPU CHECK PASS (logs in $OUT)"; exit 0; fi
echo "GPU CHECK FAIL: ${failed[*]} (logs in $OUT)"; exit 1
