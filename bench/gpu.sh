#!/usr/bin/env bash
# GPU checks, sized for one H200 in under 8 minutes (not run yet: no GPU was lent while
# this was written). From the repository root: bash bench/gpu.sh [python]
#   1. tests/test_cuda.py (nvJPEG vs the CPU decoder, preloaded batches, calibration objective,
#      bf16 training and prediction against the CPU) and the fast unit tests
#   2. the tiny pipeline with device: cuda (every stage on the GPU)
#   3. ResNet-10 @ 224 px training img/s: synthetic tensors (bare loop) vs the pipeline loop,
#      inference, and model FLOP utilisation (H200 bf16 dense peak 989 TFLOP/s); target >= 10k img/s
#   4. the real data path: 224-px JPEGs through the DataLoader and decoded on the GPU, alone
#      and feeding ResNet-10 training (4,096 files)
set -euo pipefail
PY=${1:-python}
export BALANCED_EXPERTS_SHARED_DATA=${BALANCED_EXPERTS_SHARED_DATA:-$PWD/../shared/data}
nvidia-smi --query-gpu=name,memory.total --format=csv
$PY -c "import torch; assert torch.cuda.is_available(); print(torch.__version__, torch.cuda.get_device_name())"

echo "== 1. tests (fast ones, ~2 min)"
timeout 180 $PY -m pytest -q -x -rs tests/test_cuda.py tests/test_models_and_data.py tests/test_calibration.py tests/test_metrics_and_logits.py

echo "== 2. tiny pipeline on CUDA (~1 min)"
work=$(mktemp -d)
$PY - "$work" <<'PYEOF'
import sys; sys.path.insert(0, "tests")
from pathlib import Path
from conftest import copy_workflow, tiny_config
config = tiny_config(); config["execution"].update(device="cuda", amp=True, decode_on_device=True)
copy_workflow(Path(sys.argv[1]), config)
PYEOF
(cd "$work" && timeout 180 "$(dirname "$(command -v $PY)")/snakemake" --cores 4 && tail -n 3 results/tiny/seed0/logs/train_base.log && cat results/tiny/report.csv)

echo "== 3+4. ResNet-10 throughput, MFU, data path (~3 min)"
timeout 300 $PY bench/run.py --device cuda --cores 16 --skip-pipeline \
    --backbones resnet10:224,resnet_cifar32:32 --train-images 20480 --batch 256 --peak-tflops 989 --workers 16 \
    --jpeg-train-images 4096
