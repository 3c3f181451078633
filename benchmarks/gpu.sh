#!/usr/bin/env bash
# The GPU benchmark (well under 10 minutes on one GPU): roberta-base shape and a 7B LLaMA shape in bf16,
# random-initialized, LoRA r=32 on q,k,v, the LLaMA with gradient checkpointing; PEFT LoRA vs PEFT
# MonteCLoRA vs ours: step time, peak GPU memory, tokens per second, as JSON in $OUT (or results/gpu/).
# Needs this package importable (pip install -e .). CPU check with tiny shapes: SMOKE=1 bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir=${OUT:-results/gpu}
mkdir -p "$out_dir"
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
    --gradient-checkpointing \
    "${timing[@]}" --json-out "$out_dir/llama-7b.json"
