#!/usr/bin/env bash
# The main job, end to end and offline: fine-tune the packaged MiniLM-L6 BERT on MRPC (teacher),
# compress it to 50% of its encoder parameters with DDK, evaluate the exported student.
# `--preset quick` keeps it to minutes on a 2-core CPU; drop it for the full schedule.
# --resume: a second run continues an interrupted stage and skips finished ones.
set -euo pipefail
GLUE=${GLUE:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/glue}
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"
ddk-fast finetune --task mrpc --data-dir "$GLUE" --output "$OUT/teacher" --preset quick --resume
ddk-fast compress --teacher "$OUT/teacher" --task mrpc --data-dir "$GLUE" --target params=0.5 \
    --output "$OUT/student" --preset quick --resume
ddk-fast evaluate --model "$OUT/student" --task mrpc --data-dir "$GLUE"
echo "teacher: $OUT/teacher   student: $OUT/student (report.json, structure.png, curves.png)"
