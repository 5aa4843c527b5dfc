#!/usr/bin/env bash
# The README's Performance figures on one GPU, in one go; each benchmark's JSON goes to OUT_DIR.
#   bash experiments/gpu_benchmarks.sh OUT_DIR [NAME...]      (default: every NAME below, in order)
# A benchmark that fails or runs past 10 minutes is reported and the next one runs.
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: bash experiments/gpu_benchmarks.sh OUT_DIR [NAME...]" >&2; exit 2; }
mkdir -p "$1" && out=$(cd "$1" && pwd)
shift
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1

b5="--model segformer-b5 --tile-size 640 --workers 8"
declare -A commands=(
    [pseudo_label]="bench_pseudo_label.py"
    [pseudo_label_b5]="bench_pseudo_label.py --teacher segformer-b5 --tta 8 --tile-size 1024"
    [finetune_b5]="bench_train_step.py $b5 --channels-last"
    [pretrain_b5]="bench_train_step.py $b5 --channels-last --mode pretrain"
    [finetune_b5_compiled]="bench_train_step.py $b5 --channels-last --compile"
    [seed_way_b5]="bench_seed_way.py $b5"
    [augment]="bench_augment.py"
    [sam_precision]="check_sam_precision.py"
)
names=${*:-pseudo_label pseudo_label_b5 finetune_b5 pretrain_b5 finetune_b5_compiled seed_way_b5 augment sam_precision}
for name in $names; do
    [ -n "${commands[$name]:-}" ] || { echo "unknown benchmark $name; one of: ${!commands[*]}" >&2; exit 2; }
done
for name in $names; do
    started=$SECONDS
    echo "=== $name: python ${commands[$name]}"
    # shellcheck disable=SC2086  # the command's words split on purpose
    timeout 600 python ${commands[$name]} --json "$out/$name.json" || echo "=== $name FAILED (exit $?)"
    echo "=== $name: $((SECONDS - started)) s"
done
