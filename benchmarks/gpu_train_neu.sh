#!/usr/bin/env bash
# NEU-DET GPU benchmark on a machine with no network: install the wheels you brought, then run
# benchmarks/gpu_train_neu.py (the toolkit's recipe, optionally against plain ultralytics).
#
# Usage: benchmarks/gpu_train_neu.sh WHEELS_DIR NEU_DET_DIR [gpu_train_neu.py options]
#   e.g. benchmarks/gpu_train_neu.sh wheels/ data/NEU-DET --epochs 100 --imgsz 640 --batch 64 --plain
# WHEELS_DIR holds the wheels of requirements.txt for that machine (pip download -r requirements.txt -d wheels/).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$#" -lt 2 ]; then
  sed -n '2,7p' "$0" >&2
  exit 2
fi
WHEELS=$1
NEU=$2
shift 2
PY=${PYTHON:-python3}
if ! "$PY" -c "import ultralytics, torch" >/dev/null 2>&1; then
  if [ ! -x .venv-bench/bin/python ]; then
    "$PY" -m venv .venv-bench
  fi
  PY=.venv-bench/bin/python
  "$PY" -m pip install -q --no-index --find-links "$WHEELS" -r requirements.txt
fi
exec "$PY" benchmarks/gpu_train_neu.py --neu "$NEU" "$@"
