#!/usr/bin/env bash
# The GPU check: everything cmpc does on a CUDA machine, in one run, one report (under 8 minutes on one H100/H200).
#
#   bash benchmarks/gpu_check.sh              # on a CUDA machine: writes benchmarks/results/gpu_<date>.md
#   bash benchmarks/gpu_check.sh --dry-run    # the same flow on the CPU at tiny sizes (checks the script itself)
#
# Steps (each with a time limit; a failed step is reported and the next one still runs):
#   1. environment: GPU, driver, torch, CUDA, native bf16
#   2. the test suite (fast tests) on the CUDA machine (tests that use device=auto run on the GPU)
#   3. short synthetic trainings with device=cuda: fp32, bf16, fp16 (GradScaler) and torch.compile
#   4. evaluation of the fp32 run with DenseCRF on the GPU
#   5. DDP with NCCL: every experiment config, 2 steps, in a 1-process torchrun (tests/ddp_experiments.py)
#   6. benchmarks/compile_probe.py (graphs, recompiles, host syncs) and benchmarks/run.py --device cuda
# Environment: PYTHON (default python), OUT (report path), DEVICE (default cuda; cpu = --dry-run).
set -uo pipefail

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PYTHON:-python}"
DEVICE="${DEVICE:-$([[ $DRY == 1 ]] && echo cpu || echo cuda)}"
WORK="$(mktemp -d)"
export CMPC_RUNS_DIR="$WORK/runs" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if [[ $DRY == 1 ]]; then
  OUT="${OUT:-$WORK/gpu_dry_run.md}"
else
  OUT="${OUT:-benchmarks/results/gpu_$(date -u +%Y-%m-%d).md}"
fi
START=$SECONDS
FAILED=()

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# step NAME SECONDS COMMAND...: run with a time limit, log to $WORK/NAME.log, add a section to the report
step() {
  local name="$1" limit="$2"; shift 2
  local log="$WORK/$name.log" begin=$SECONDS status
  echo "== $name (limit ${limit}s): $*" >&2
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  status=$?
  local took=$((SECONDS - begin)) verdict="ok"
  [[ $status == 124 || $status == 137 ]] && verdict="TIMED OUT"
  [[ $status != 0 && $verdict == ok ]] && verdict="FAILED (exit $status)"
  [[ $verdict != ok ]] && FAILED+=("$name")
  {
    echo "## $name: $verdict in ${took}s"
    echo
    echo '```'
    echo "\$ $*"
    tail -n "${TAIL:-25}" "$log"
    echo '```'
    echo
  } >>"$OUT"
  echo "   $verdict in ${took}s" >&2
}

# the training recipe of steps 3-5: tiny synthetic data, the small backbone, a few hundred sentences
DATA="$WORK/data"
if [[ $DRY == 1 ]]; then STEPS=3; SPLITS="{train: 6, val: 3, test: 3}"; else STEPS=60; SPLITS="{train: 48, val: 12, test: 12}"; fi
TRAIN=(scripts/train.py "paths.data=$DATA" "device=$DEVICE" "dataset.generate.splits=$SPLITS" "trainer.steps=$STEPS"
       "trainer.batch_size=8" "trainer.group_by_image=true" "trainer.eval_every=0" "trainer.num_workers=2"
       "trainer.log_every=10" "trainer.checkpoint_every=1000")

mkdir -p "$(dirname "$OUT")"
{
  echo "# GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "\`bash benchmarks/gpu_check.sh${1:+ $1}\` at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), device $DEVICE"
  [[ $DRY == 1 ]] && echo "DRY RUN on the CPU at tiny sizes: checks the script's flow; the figures mean nothing."
  echo
} >"$OUT"

step environment 60 bash -c "nvidia-smi -L 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null; \
  \"$PY\" -c 'import torch; from cmpc.engine.precision import native; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \
  \"available\", torch.cuda.is_available()); d = torch.device(\"$DEVICE\"); print(\"native bf16\", native(d, \"bf16\"), \"native fp16\", native(d, \"fp16\"))'"

if [[ $DRY == 1 ]]; then
  step tests 300 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_devices.py -k "word_encoder or shards or equal_share"
else
  step tests 150 "$PY" -m pytest -q -x -p no:cacheprovider -m "not slow" tests
fi

for amp in off bf16 fp16; do
  step "train_$amp" 150 "$PY" "${TRAIN[@]}" "trainer.amp=$amp" "hydra.run.dir=$WORK/run_$amp"
done
step train_compile "$([[ $DRY == 1 ]] && echo 900 || echo 300)" "$PY" "${TRAIN[@]}" "trainer.amp=$([[ $DRY == 1 ]] && echo off || echo bf16)" \
  "trainer.compile=true" "hydra.run.dir=$WORK/run_compile"

step eval_crf 120 "$PY" scripts/eval.py "checkpoint=$WORK/run_off/best.pt" "paths.data=$DATA" "device=$DEVICE" \
  split=test crf=true num_workers=2

step ddp_1_process 180 "$PY" -m torch.distributed.run --nproc_per_node=1 "--master_port=$(free_port)" \
  tests/ddp_experiments.py "$WORK/ddp.jsonl" "$DEVICE"
[[ -f "$WORK/ddp.jsonl" ]] && { echo "models trained under DDP (experiment configs + 1 with an unused module): $(wc -l <"$WORK/ddp.jsonl")"; echo; } >>"$OUT"

if [[ $DRY == 1 ]]; then
  step compile_probe 300 "$PY" benchmarks/compile_probe.py --device "$DEVICE" --steps 4 --log-every 2
  TAIL=60 step benchmarks 300 "$PY" benchmarks/run.py --device "$DEVICE" --tiny --size 64 --repeats 1 --batch 4 \
    --per-image 2 --sections train infer
else
  TAIL=40 step compile_probe 120 "$PY" benchmarks/compile_probe.py --device "$DEVICE"
  TAIL=60 step benchmarks 180 "$PY" benchmarks/run.py --device "$DEVICE" --sections train infer --repeats 2
fi

{
  echo "## Summary"
  echo
  echo "total $((SECONDS - START))s; failed or timed out: ${FAILED[*]:-none}"
} >>"$OUT"
echo "report: $OUT" >&2
[[ ${#FAILED[@]} == 0 ]]
