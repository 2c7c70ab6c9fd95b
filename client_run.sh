#!/usr/bin/env bash
# Run the study's CLI against a swarm. The swarm comes from the environment:
#   INITIAL_PEERS  multiaddrs of the swarm (printed by server_run.sh); empty: a loopback swarm is started
#   MODEL_NAME     the model the swarm serves (default smollm2-135m, the embedded model)
# Every flag passes through to `python -m gsmswarm run` (see its --help), e.g.
#   INITIAL_PEERS=$(cat .cache/swarm/local/initial_peers.txt) bash client_run.sh --method cot --limit 20
# Prepare a client machine first with --setup cpu (install.sh: CPU torch) or --setup cuda (then CUDA torch
# from $TORCH_CUDA_INDEX, default the PyTorch cu128 index), e.g.  bash client_run.sh --setup cuda
# --dry-run (first) prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;; esac
dry_run=0
if [ "${1:-}" = --dry-run ]; then dry_run=1; shift; fi
run() { echo "+ $*" >&2; [ "$dry_run" = 1 ] || "$@"; }
if [ "${1:-}" = --setup ]; then
  case "${2:-}" in
    cpu) run bash install.sh ;;
    cuda) run bash install.sh
          run .venv/bin/python -m pip install --force-reinstall --no-deps torch==2.13.0 \
              --index-url "${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}" ;;
    *) echo "error: client_run.sh: --setup takes cpu or cuda" >&2; exit 2 ;;
  esac
  exit 0
fi
cmd=(.venv/bin/python -m gsmswarm run --backend petals --model "${MODEL_NAME:-smollm2-135m}" "$@")
echo "+ INITIAL_PEERS=\"${INITIAL_PEERS:-}\" ${cmd[*]}" >&2
[ "$dry_run" = 1 ] && exit 0
export INITIAL_PEERS=${INITIAL_PEERS:-} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}
exec "${cmd[@]}"
