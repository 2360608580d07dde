#!/usr/bin/env bash
# Plan a pipeline without running it (pull requests): what would run, what is cached, and why.
# Writes plan.json (--json) and plan.md (a comment body); exit 0 either way unless the plan
# itself failed (raypipe plan --detailed-exitcode: 0 nothing would run, 2 something would, 1 error).
#   PIPELINE=configs/quickstart.yaml examples/ci/scripts/plan.sh
set -uo pipefail
PIPELINE="${PIPELINE:-configs/quickstart.yaml}"
RAYPIPE="${RAYPIPE:-raypipe}"

$RAYPIPE validate "$PIPELINE" || exit 1
$RAYPIPE plan "$PIPELINE" --detailed-exitcode --json > plan.json
code=$?
case "$code" in
  0) summary="Nothing would run: every stage is a cache hit." ;;
  2) summary="Some stages would run." ;;
  *) echo "raypipe plan failed (exit $code)" >&2; exit 1 ;;
esac
{
  echo "### raypipe plan: \`$PIPELINE\`"
  echo
  echo "$summary"
  echo
  echo '<details><summary>plan.json</summary>'
  echo
  echo '```json'
  cat plan.json
  echo '```'
  echo '</details>'
} > plan.md
echo "$summary"
echo "plan_exit=$code" >> "${GITHUB_OUTPUT:-/dev/null}"
