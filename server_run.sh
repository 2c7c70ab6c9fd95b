#!/usr/bin/env bash
# Start Petals servers for a private swarm (the public swarm only with --public).
#
#   bash server_run.sh --local [--model smollm2-135m] [--num-servers 2]
#       A whole swarm on this machine: a DHT bootstrap peer plus servers that split the model's blocks,
#       all on 127.0.0.1, CPU, fp32. Prints `export INITIAL_PEERS=...` for client_run.sh; Ctrl-C stops it.
#
#   bash server_run.sh --model MODEL --new-swarm --public-ip IP [options]      # first GPU node
#   bash server_run.sh --model MODEL --initial-peers "ADDR" --public-ip IP [options]   # every other node
#       A GPU node of a private swarm. --new-swarm also starts the swarm's DHT bootstrap peer on this node
#       (fixed identity in .cache/swarm/dht.id, port --dht-port) and prints the INITIAL_PEERS address that
#       other servers and clients must use. MODEL: a hub id (e.g. meta-llama/Llama-2-7b-hf) or a folder.
#     --block-indices A:B | --num-blocks N   which blocks to serve (default: Petals picks --num-blocks)
#     --port P (31337)  --dht-port P (31336)  --host H (0.0.0.0)   where to listen
#     --torch-dtype float16|bfloat16|float32 (float16)  --quant-type none|int8|nf4 (none)  --device cuda
#     --dht-prefix NAME   the name the model is served under (default: what clients derive from MODEL)
#     --attn-cache-tokens N   attention cache, in tokens summed over every open session's rows (default 65536:
#                         4 self-consistency requests of 8 rows x ~1,000 tokens). It is a limit, allocated as
#                         sessions need it, of N x 2 x hidden size / KV groups x dtype bytes per block: 1 GiB
#                         per block for a 7B Llama in float16. Lower it on a small GPU, and the client's
#                         --batch-size with it; a session that finds no room fails ("Could not allocate")
#     --docker            run the server inside Petals' image (learningathome/petals:main) with this repo
#                         mounted; --install-docker installs Docker and the NVIDIA container toolkit first
#   bash server_run.sh --public --model MODEL    # join the PUBLIC swarm with Petals' own CLI (explicit only)
#
#   --dry-run   print the commands instead of running them
set -euo pipefail
cd "$(dirname "$0")"
mode="" dry_run=0 model="" num_servers=2 peers=${INITIAL_PEERS:-} public_ip="" host=0.0.0.0 port=31337
dht_port=31336 blocks=() dtype=float16 quant=none device=cuda prefix="" cache=() docker=0 install_docker=0
need() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "error: server_run.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --local) mode=local ;;
    --new-swarm) mode=new ;;
    --public) mode=public ;;
    --model) need "$@"; model=$2; shift ;;
    --num-servers) need "$@"; num_servers=$2; shift ;;
    --initial-peers) need "$@"; peers=$2; shift ;;
    --public-ip) need "$@"; public_ip=$2; shift ;;
    --host) need "$@"; host=$2; shift ;;
    --port) need "$@"; port=$2; shift ;;
    --dht-port) need "$@"; dht_port=$2; shift ;;
    --block-indices) need "$@"; blocks=(--block-indices "$2"); shift ;;
    --num-blocks) need "$@"; blocks=(--num-blocks "$2"); shift ;;
    --torch-dtype) need "$@"; dtype=$2; shift ;;
    --quant-type) need "$@"; quant=$2; shift ;;
    --device) need "$@"; device=$2; shift ;;
    --dht-prefix) need "$@"; prefix=$2; shift ;;
    --attn-cache-tokens) need "$@"; cache=(--attn-cache-tokens "$2"); shift ;;
    --docker) docker=1 ;;
    --install-docker) install_docker=1 ;;
    --dry-run) dry_run=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "error: server_run.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
run() { echo "+ $*" >&2; [ "$dry_run" = 1 ] || "$@"; }
# The long-lived command replaces this shell, so SIGINT/SIGTERM sent to this script's PID (a notebook's
# subprocess, a service manager, `kill`) reach the process that stops everything it started.
run_exec() { echo "+ $*" >&2; [ "$dry_run" = 1 ] && exit 0; exec "$@"; }
py=.venv/bin/python

if [ "$mode" = local ]; then
  run_exec $py -m gsmswarm.swarm local --model "${model:-smollm2-135m}" --num-servers "$num_servers"
fi
[ -n "$model" ] || { echo "error: server_run.sh: --model is required (or --local; see --help)" >&2; exit 2; }
if [ "$mode" = public ]; then
  echo "note: joining the PUBLIC Petals swarm with Petals' own CLI (it checks PyPI and reports to the health monitor)" >&2
  run_exec $py -m petals.cli.run_server "$model" --port "$port" ${public_ip:+--public_ip "$public_ip"}
fi
if [ "$mode" != new ] && [ -z "$peers" ]; then
  echo "error: server_run.sh: give --initial-peers (or INITIAL_PEERS), or --new-swarm to start a private swarm; --public is the only way to the public swarm" >&2
  exit 2
fi
[ -n "$public_ip" ] || { echo "error: server_run.sh: --public-ip is required: the address other nodes reach this one at" >&2; exit 2; }
[ ${#blocks[@]} -gt 0 ] || blocks=(--num-blocks 32)
# the name the client derives for MODEL (gsmswarm.swarm.dht_prefix_for): its last path part, sanitised
prefix=${prefix:-$(basename "${model%/}" | sed -E 's/[^A-Za-z0-9_-]+/-/g; s/^-+//; s/-+$//')}

if [ "$install_docker" = 1 ]; then  # Docker and the NVIDIA container toolkit (Debian/Ubuntu)
  run sh -c "curl -fsSL https://get.docker.com | sh"
  run sh -c "curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor -o /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
  run sh -c "curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list | sed 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' > /etc/apt/sources.list.d/nvidia-container-toolkit.list"
  run sh -c "apt-get update && apt-get install -y nvidia-container-toolkit && nvidia-ctk runtime configure --runtime=docker && systemctl restart docker"
fi

mkdir -p .cache/swarm
if [ "$mode" = new ]; then
  dht=($py -m gsmswarm.swarm dht --peers-file .cache/swarm/initial_peers.txt --identity-path .cache/swarm/dht.id
       --host "$host" --port "$dht_port" --public-ip "$public_ip")
  echo "+ ${dht[*]} &" >&2
  if [ "$dry_run" = 0 ]; then
    rm -f .cache/swarm/initial_peers.txt
    "${dht[@]}" > .cache/swarm/dht.log 2>&1 &
    dht_pid=$!
    trap 'kill -INT $dht_pid 2>/dev/null || true' EXIT
    for _ in $(seq 120); do [ -s .cache/swarm/initial_peers.txt ] && break; sleep 1; done
    [ -s .cache/swarm/initial_peers.txt ] || { echo "error: the DHT did not start; see .cache/swarm/dht.log" >&2; exit 1; }
    peers=$(grep "/ip4/$public_ip/" .cache/swarm/initial_peers.txt | head -1)
  else
    peers="/ip4/$public_ip/tcp/$dht_port/p2p/<peer id from .cache/swarm/dht.id>"
  fi
  echo "export INITIAL_PEERS=\"$peers\"   # for every other server_run.sh and client_run.sh"
fi

server=(python -m gsmswarm.swarm server "$model" "${blocks[@]}" --initial-peers $peers --dht-prefix "$prefix"
        --torch-dtype "$dtype" --quant-type "$quant" --device "$device" --host "$host" --port "$port"
        --public-ip "$public_ip" "${cache[@]}")
if [ "$docker" = 1 ]; then
  cmd=(docker run --rm --gpus all --ipc host -p "$port:$port" -v "$PWD:/gsmswarm" -w /gsmswarm
       -v "$HOME/.cache/huggingface:/root/.cache/huggingface" -e PYTHONPATH=/gsmswarm
       learningathome/petals:main "${server[@]}")
else
  cmd=("${py}" "${server[@]:1}")
fi
[ -n "${dht_pid:-}" ] || run_exec "${cmd[@]}"
# with our own DHT peer: the server runs beside it, and a signal to this script stops both
echo "+ ${cmd[*]}" >&2
[ "$dry_run" = 1 ] && exit 0
"${cmd[@]}" &
server_pid=$!
trap 'kill -INT $server_pid 2>/dev/null || true' INT TERM
while kill -0 $server_pid 2>/dev/null; do wait $server_pid || true; done
