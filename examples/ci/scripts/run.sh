#!/usr/bin/env bash
# Run a pipeline to the end (main branch): its evaluate stage is the gate (a missed gate fails
# the run, exit 1) and its register stage registers the model only when the gate passed.
#   RAY_ADDRESS=ray://head:10001 RAYPIPE_DB=postgresql://ml:${PG_PASSWORD}@db/raypipe \
#   STORAGE=s3://bucket/raypipe examples/ci/scripts/run.sh
set -euo pipefail
PIPELINE="${PIPELINE:-configs/quickstart.yaml}"
RAYPIPE="${RAYPIPE:-raypipe}"
args=()
[[ -n "${STORAGE:-}" ]] && args+=(--set "storage=$STORAGE")
[[ -n "${RAY_ADDRESS:-}" ]] && args+=(--address "$RAY_ADDRESS")

$RAYPIPE validate "$PIPELINE"
# exit 0: succeeded; 1: a stage failed (the gate among them); 2: a config error
$RAYPIPE run "$PIPELINE" "${args[@]}"
$RAYPIPE models
