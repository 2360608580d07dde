#!/usr/bin/env bash
# A canary rollout (tags): the candidate gets traffic step by step behind guardrails, then is
# promoted to @production or rolled back.  Waits for the outcome; exit 1 when rolled back.
#   APP=digits ROLLOUT=configs/canary_digits.yaml examples/ci/scripts/canary.sh
set -euo pipefail
APP="${APP:-digits}"
ROLLOUT="${ROLLOUT:-configs/canary_digits.yaml}"
RAYPIPE="${RAYPIPE:-raypipe}"
TIMEOUT_S="${TIMEOUT_S:-3600}"
args=()
[[ -n "${RAY_ADDRESS:-}" ]] && args+=(--address "$RAY_ADDRESS")

$RAYPIPE validate "$ROLLOUT"
$RAYPIPE rollout start "$APP" --config "$ROLLOUT" "${args[@]}"
deadline=$(( $(date +%s) + TIMEOUT_S ))
while true; do
  state=$($RAYPIPE rollout status "$APP" --json "${args[@]}" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("state", ""))')
  case "$state" in
    promoted) echo "rollout of $APP promoted"; exit 0 ;;
    rolled_back|aborted|failed) echo "rollout of $APP ended: $state" >&2; exit 1 ;;
  esac
  if (( $(date +%s) > deadline )); then
    echo "rollout of $APP still $state after ${TIMEOUT_S}s; aborting" >&2
    $RAYPIPE rollout abort "$APP" "${args[@]}"
    exit 1
  fi
  sleep 30
done
