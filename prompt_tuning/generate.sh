#!/usr/bin/env bash
# Solve GSM8K problems with a trained soft prompt in front of the prompt: client_run.sh with
# `--method cot --soft-prompt RUN_FOLDER` (further flags pass through to `python -m gsmswarm run`), e.g.
#   bash prompt_tuning/generate.sh prompt_tuning/ptune__petals__smollm2-135m__v16__s0 --prompt qa_zeroshot --limit 150
# Results go to method_results/cot/ and name the soft prompt they used. --dry-run prints the command.
set -euo pipefail
case "${1:-}" in -h|--help|"") awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;; esac
dry_run=()
if [ "$1" = --dry-run ]; then dry_run=(--dry-run); shift; fi
soft_prompt=$(realpath "$1"); shift
exec bash "$(dirname "$0")/../client_run.sh" "${dry_run[@]}" --method cot --soft-prompt "$soft_prompt" "$@"
