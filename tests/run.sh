#!/usr/bin/env bash
# The test command (README, .ci/run): install (idempotent), then pytest, inside a network namespace that
# has only loopback where this machine allows one (root + unshare), else on plain loopback. Arguments pass
# to pytest; --fast (first) runs the unit lane only (no model, swarm or CLI run; see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash install.sh
if [ "${1:-}" = --fast ]; then shift; set -- -m unit "$@"; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ "$(id -u)" = 0 ] && command -v ip >/dev/null && unshare -n true 2>/dev/null; then
  echo "+ unshare -n: pytest sees loopback only"
  exec unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m pytest "$@"' sh "$@"
fi
echo "note: no network namespace available; tests run on plain loopback" >&2
exec .venv/bin/python -m pytest "$@"
