#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent machine (see README "GPU checks"): the MFU benchmark of
# the `1b` preset at 2 x 8k tokens, then the CUDA tests (FlexAttention forward and backward, fp8, FSDP2 over NCCL with
# MFU in the metrics), then the 1b preset's MFU through the Trainer (train_bench). Runs with the machine's own python3
# and torch; logs go to $OUT (or ./gpu-logs).
# Each step has its own time limit, and a step is skipped when the budget (BUDGET_S, default 560 s) is spent.
set -u
OUT=${OUT:-gpu-logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
BUDGET_S=${BUDGET_S:-560}
PY=${PYTHON:-python3}

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    if (( SECONDS + 30 > BUDGET_S )); then echo "== $name: skipped (budget spent at ${SECONDS}s)"; return; fi
    (( limit > BUDGET_S - SECONDS )) && limit=$(( BUDGET_S - SECONDS ))
    echo "== $name (limit ${limit}s, at ${SECONDS}s)"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    LAST=$?
    echo "== $name: exit $LAST after ${SECONDS}s"
    tail -n 8 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
step mfu_1b_8k_b2 200 $PY benchmarks/mfu_bench.py --preset 1b --seq 8192 --batch 2 --steps 10
MFU_RC=$LAST
step tests 300 $PY -m pytest -q -p no:cacheprovider tests/test_gpu.py -rs
# the 1b preset through the Trainer (real packed trace corpus, logging, one ~15 GB checkpoint): MFU goal >= 45%
step train_bench_1b 280 $PY benchmarks/train_bench.py --preset 1b --preset-vocab --seq-len 8192 --batch-size 2 \
    --steps 20 --repeats 1 --compile --checkpoint-every 20
if (( MFU_RC == 0 )); then  # a larger batch, if it fits the card
    step mfu_1b_8k_b3 150 $PY benchmarks/mfu_bench.py --preset 1b --seq 8192 --batch 3 --steps 10
else  # the compiled run failed: measure eager, so there is a figure and a log of the failure
    step mfu_1b_8k_eager 150 $PY benchmarks/mfu_bench.py --preset 1b --seq 8192 --steps 10 --no-compile
fi
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
