#!/usr/bin/env bash
# Start Petals servers for a private swarm (never the public one).
#
#   bash server_run.sh --local [--model smollm2-135m] [--num-servers 2]
#       A whole swarm on this machine: a DHT bootstrap peer plus servers that split the model's blocks,
#       all on 127.0.0.1, CPU, fp32. Prints `export INITIAL_PEERS=...` for client_run.sh; Ctrl-C stops it.
#   --dry-run   print the command instead of running it
set -euo pipefail
cd "$(dirname "$0")"
local_mode=0 dry_run=0 model=smollm2-135m num_servers=2
while [ $# -gt 0 ]; do
  case "$1" in
    --local) local_mode=1 ;;
    --model) model=${2:?--model needs a value}; shift ;;
    --num-servers) num_servers=${2:?--num-servers needs a value}; shift ;;
    --dry-run) dry_run=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "error: server_run.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$local_mode" != 1 ]; then
  echo "error: server_run.sh: only --local (a loopback swarm on this machine) is available so far" >&2
  exit 2
fi
cmd=(.venv/bin/python -m gsmswarm.swarm local --model "$model" --num-servers "$num_servers")
echo "+ ${cmd[*]}" >&2
[ "$dry_run" = 1 ] && exit 0
[ -x .venv/bin/python ] || { echo "error: no .venv here; run bash install.sh first" >&2; exit 2; }
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec "${cmd[@]}"
