#!/usr/bin/env bash
# GPU checks for one H200, every step under a time limit, 8 minutes in all. Not run on a GPU
# yet: none has been lent to this project (the README's "On a GPU" says what has run).
#
#   bash bench/gpu.sh [--cpu] [python]        python: the venv's, e.g. .venv/bin/python
#
#   1. tests/test_cuda.py (nvJPEG against the CPU decoder, the CMYK fallback, preloaded
#      batches, the file path's batched jitter, calibration objective, bf16 training and
#      prediction against the CPU),
#      tests/test_gpu_path.py and the fast unit tests
#   2. the tiny pipeline on JPEG files (a `lists` dataset, preload: false, one CMYK file)
#      with device: cuda, amp and decode_on_device: every stage on the GPU, every image
#      decoded by nvJPEG (the CMYK file's batch by the CPU fallback)
#   3. ResNet-10 @ 224 px training img/s: synthetic tensors (bare loop) vs the pipeline loop,
#      inference, and model FLOP utilisation (H200 bf16 dense peak 989 TFLOP/s)
#   4. the real data path: 224-px JPEGs through the DataLoader and decoded on the GPU, alone
#      and feeding ResNet-10 training (2,048 files)
#
# --cpu: the same steps with the CPU standing in for the GPU (test_cuda.py compares the CPU
# with itself; the pipeline decodes its JPEGs with decode_on_device on the CPU), at CPU sizes
# in step 3+4, under the same time limits: proves the script's plumbing where no GPU is lent.
set -euo pipefail
cpu=false
if [[ ${1:-} == --cpu ]]; then cpu=true; shift; fi
PY=${1:-python}
# An absolute interpreter path, so that it still works after a `cd` (symlinks kept: a venv's
# python is one, and its target alone would not see the venv's packages).
if [[ $PY == */* ]]; then PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"; else PY=$(command -v "$PY") || true; fi
[[ -x $PY ]] || { echo "bench/gpu.sh: no python interpreter ${1:-python}" >&2; exit 1; }
cd "$(dirname "$0")/.."
export BALANCED_EXPERTS_SHARED_DATA=${BALANCED_EXPERTS_SHARED_DATA:-$PWD/../shared/data}

# Step 2's target and what it shows of the pipeline's results (the dataset is called "tiny").
REPORT=results/tiny/report.csv
TRAIN_LOG=results/tiny/seed0/logs/train_base.log

# Time limits in seconds: device check, tests, JPEG dataset, pipeline, throughput benches.
# T_BENCH was set for three loader rounds (--loader-rounds 3 below; the bench's default is 5).
T_CHECK=20 T_TESTS=80 T_DATA=20 T_PIPELINE=220 T_BENCH=140
(( T_CHECK + T_TESTS + T_DATA + T_PIPELINE + T_BENCH <= 480 )) || { echo "time limits exceed 8 minutes" >&2; exit 1; }

started=$SECONDS step=$SECONDS
took() { echo "   (step: $((SECONDS - step)) s of its limit $1 s)"; step=$SECONDS; }
if $cpu; then
    device=cpu cores=2
    export BALANCED_EXPERTS_GPU_STAND_IN=cpu
    bench_sizes=(--cores 2 --backbones resnet10:224 --train-images 32 --batch 16 --workers 2 --loader-images 32
                 --loader-rounds 3 --jpeg-train-images 16)
    echo "== 0. the CPU stands in for the GPU (--cpu)"
    timeout $T_CHECK "$PY" -c "import torch; print(torch.__version__, 'on the CPU')"
else
    device=cuda cores=8
    bench_sizes=(--cores 16 --backbones resnet10:224,resnet_cifar32:32 --train-images 20480 --batch 256
                 --peak-tflops 989 --workers 16 --loader-images 192
                 --loader-rounds 3 --jpeg-train-images 2048)
    echo "== 0. the GPU"
    timeout $T_CHECK "$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'
p = torch.cuda.get_device_properties(0); print(torch.__version__, p.name, f'{p.total_memory / 2**30:.0f} GiB')"
fi
took $T_CHECK

echo "== 1. tests (limit ${T_TESTS}s)"
timeout $T_TESTS "$PY" -m pytest -q -x -rs tests/test_cuda.py tests/test_gpu_path.py tests/test_models_and_data.py \
    tests/test_calibration.py tests/test_metrics_and_logits.py
took $T_TESTS

echo "== 2. tiny pipeline on JPEG files, device: $device, decode_on_device (limits ${T_DATA}s + ${T_PIPELINE}s)"
work=$(mktemp -d)
timeout $T_DATA "$PY" - "$work" "$device" <<'PYEOF'
import sys
sys.path[:0] = ["tests", "src"]
from pathlib import Path
from conftest import copy_workflow, jpeg_dataset, tiny_config
work, device = Path(sys.argv[1]), sys.argv[2]
config = tiny_config()
config["datasets"]["tiny"] = jpeg_dataset(work / "data")
config["execution"].update(device=device, amp=True, decode_on_device=True)
copy_workflow(work / "workflow", config)
PYEOF
took $T_DATA
# The tiny jobs share the one GPU (profiles/default lets one GPU job run at a time).
(cd "$work/workflow" && timeout $T_PIPELINE "$PY" -m snakemake --cores $cores --resources gpu=$cores --quiet rules \
    -- "$REPORT" && tail -n 3 "$TRAIN_LOG" && cat "$REPORT")
took $T_PIPELINE
echo "   (workflow and results in $work)"

echo "== 3+4. ResNet-10 throughput, MFU, data path (limit ${T_BENCH}s)"
timeout $T_BENCH "$PY" bench/run.py --device $device --only models,loading "${bench_sizes[@]}"
took $T_BENCH

echo "== all steps passed in $((SECONDS - started)) s"
