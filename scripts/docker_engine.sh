#!/usr/bin/env bash
# Make sure a Docker engine answers: install Debian's docker.io and start dockerd if needed.
set -euo pipefail

if docker info >/dev/null 2>&1; then exit 0; fi

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: no Docker engine, and installing one needs root: run 'sudo apt-get install docker.io' and start it" >&2
    exit 1
  fi
  echo "setup: installing Debian's docker.io"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io debootstrap >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd (log: /tmp/cispo-dockerd.log)"
  # setsid: the engine outlives this script and the make that ran it.
  setsid nohup dockerd >/tmp/cispo-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 1
  done
  echo "setup: dockerd did not answer within 60 s; see /tmp/cispo-dockerd.log" >&2
  exit 1
fi
