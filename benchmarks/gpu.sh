#!/usr/bin/env bash
# The GPU benchmark, prepared for one run on a lent NVIDIA machine (well under 10 minutes):
# roberta-base shape and a 7B LLaMA shape in bf16, random-initialized, LoRA r=32 on q,k,v;
# PEFT LoRA vs PEFT MonteCLoRA vs ours: step time, peak GPU memory, tokens per second, as JSON.
#
# That machine has torch, transformers and peft but not pyro: bring the wheels in .whl/ first
# (here, in the repo root; see the device tool's README):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl pyro-ppl==1.9.1 pyro-api==0.1.2 opt-einsum==3.4.0
# then run `bash benchmarks/gpu.sh` there with `.whl` carried. Results go to $OUT (or results/gpu/).
# CPU check of the same script with tiny shapes: SMOKE=1 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=${OUT:-results/gpu}
mkdir -p "$out_dir"
if ! python3 -c "import pyro" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! python3 -c "import monteclora_pyro.guides" 2>/dev/null; then
    python3 -m pip install -q --no-deps --no-build-isolation --target /tmp/monteclora .
    export PYTHONPATH=/tmp/monteclora${PYTHONPATH:+:$PYTHONPATH}
fi
if [[ "${SMOKE:-0}" == 1 ]]; then
    device=cpu; roberta=(--backbone tiny --batch-size 2 --seq-len 16); llama=(--backbone llama-tiny --batch-size 2 --seq-len 16)
    timing=(--warmup 1 --repeats 1)
else
    device=cuda; roberta=(--backbone roberta-base --batch-size 32 --seq-len 128)
    llama=(--backbone llama-7b --batch-size 8 --seq-len 256); timing=(--warmup 3 --repeats 10)
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out_dir/device.txt" 2>/dev/null || true
python3 benchmarks/step_time.py "${roberta[@]}" --device "$device" --rank 32 --targets query,key,value \
    "${timing[@]}" --json-out "$out_dir/roberta-base.json"
python3 benchmarks/step_time.py "${llama[@]}" --device "$device" --rank 32 --targets q_proj,k_proj,v_proj \
    "${timing[@]}" --json-out "$out_dir/llama-7b.json"
