#!/usr/bin/env bash
# Prepare the machine that trains soft prompts: install the pinned environment (install.sh: CPU torch,
# Petals, PEFT, the embedded model converted once), then check that training can start offline: the
# model folder, the train/dev split and PEFT import. Prints the next command. --dry-run prints the steps.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;; esac
steps=("bash install.sh"
       ".venv/bin/python -c 'import peft, petals; from gsmswarm.data import load_split; from gsmswarm.convert import ensure_model; print(\"model:\", ensure_model()); print(\"train:\", len(load_split(\"train\")), \"dev:\", len(load_split(\"dev\")))'")
if [ "${1:-}" = --dry-run ]; then printf '+ %s\n' "${steps[@]}" >&2; exit 0; fi
[ $# -eq 0 ] || { echo "error: unknown flag $1 (see --help)" >&2; exit 2; }
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
for step in "${steps[@]}"; do echo "+ $step" >&2; eval "$step"; done
echo "ready: bash prompt_tuning/train.sh --help" >&2
