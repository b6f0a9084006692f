#!/usr/bin/env bash
# The main job, end to end and offline, sized for a 2-core CPU: fine-tune the packaged MiniLM-L6 BERT
# on 4000 SST-2 sentences (teacher), prune it one-shot to 50 % of its encoder parameters (no
# training), compress it with DDK from that start (search + distillation on 1000 sentences), and print
# the dev accuracy of each next to the majority-class baseline.
# --resume: a second run continues an interrupted stage and skips finished ones.
set -euo pipefail
GLUE=${GLUE:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data/glue}
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"
ddk-fast finetune --task sst2 --data-dir "$GLUE" --output "$OUT/teacher" --preset quick --resume
ddk-fast prune --teacher "$OUT/teacher" --task sst2 --data-dir "$GLUE" --target params=0.5 \
    --output "$OUT/pruned" --preset quick --overwrite
ddk-fast compress --teacher "$OUT/teacher" --task sst2 --data-dir "$GLUE" --target params=0.5 \
    --output "$OUT/student" --preset quick --resume
python - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
pruned = json.load(open(os.path.join(out, "pruned", "report.json")))
student = json.load(open(os.path.join(out, "student", "report.json")))
main = student["main_metric"]
rows = [("majority class (constant)", student["majority_dev"]), ("teacher", student["teacher_dev"]),
        ("prune (one-shot, no training)", pruned["student_dev"]), ("compress (DDK)", student["student_dev"])]
print(f"\nSST-2 dev {main}, students at {student['params']['ratio']:.0%} of the teacher's encoder parameters, "
      f"export {student['latency']['speedup']}x faster on this CPU:")
for name, dev in rows:
    print(f"  {name:32s} {dev[main]:.4f}")
PY
echo "teacher: $OUT/teacher   one-shot: $OUT/pruned   student: $OUT/student (report.json, structure.png, curves.png)"
