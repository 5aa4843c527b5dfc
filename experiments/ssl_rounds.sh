#!/usr/bin/env bash
# Repeat teacher -> pseudo-label -> pretrain -> fine-tune K times; each round's student teaches the next.
#   experiments/ssl_rounds.sh CONFIG DATA OUT K [extra pseudo-label flags, e.g. --labeled DATA]
# Every stage resumes: rerunning the same command after an interruption continues where it stopped.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 CONFIG DATA OUT K [extra pseudo-label flags]" >&2
  exit 2
fi
config=$1 data=$2 out=$3 rounds=$4
shift 4
resume() { [ -f "$1/latest.pth" ] && echo --resume || true; }

ssl-seg finetune --config "$config" --data "$data" --out "$out/round0/teacher" $(resume "$out/round0/teacher")
teacher="$out/round0/teacher/best.pth"
for round in $(seq 1 "$rounds"); do
  dir="$out/round$round"
  ssl-seg pseudo-label --config "$config" --checkpoint "$teacher" --images "$data" --out "$dir/pseudo" "$@"
  ssl-seg pretrain --config "$config" --data "$data" --pseudo-labels "$dir/pseudo" --init "$teacher" \
    --out "$dir/student_pre" $(resume "$dir/student_pre")
  ssl-seg finetune --config "$config" --data "$data" --init "$dir/student_pre/latest.pth" \
    --out "$dir/student" $(resume "$dir/student")
  teacher="$dir/student/best.pth"
done
echo "final model: $teacher"
