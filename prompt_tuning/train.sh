#!/usr/bin/env bash
# Train a soft prompt on GSM8K train: a thin wrapper of `python -m gsmswarm train-prompt` (every flag passes
# through; see its --help). Through a swarm by default (INITIAL_PEERS from the environment, else a loopback
# swarm is started), e.g.
#   bash prompt_tuning/train.sh --tuning-mode ptune --num-virtual-tokens 16 --steps 200
#   bash prompt_tuning/train.sh --backend local            # PEFT prompt tuning on this machine
# The soft prompt lands in prompt_tuning/<run>/; rerunning the same command resumes an interrupted run.
# --dry-run prints the command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;; esac
dry_run=0
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
cmd=(.venv/bin/python -m gsmswarm train-prompt "$@")
echo "+ INITIAL_PEERS=\"${INITIAL_PEERS:-}\" ${cmd[*]}" >&2
[ "$dry_run" = 1 ] && exit 0
export INITIAL_PEERS=${INITIAL_PEERS:-} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec "${cmd[@]}"
