#!/usr/bin/env bash
# The paper's table from every finished validation run: results/results.{md,csv,png}.
source "$(dirname "$0")/lib.sh"
"$PY" -m util.aggregate "$LOG_DIR/validate" --out "${OUT:-results}"
