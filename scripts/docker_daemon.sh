#!/usr/bin/env bash
# Make sure a Docker daemon answers (install Debian's docker.io and start dockerd if needed),
# and that debootstrap is there for `cispo-env build-image`. Safe to run again.
set -euo pipefail

need_install=()
command -v dockerd >/dev/null 2>&1 || docker info >/dev/null 2>&1 || need_install+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_install+=(debootstrap)

if [ ${#need_install[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need_install[*]}, and installing needs root: run 'sudo apt-get install ${need_install[*]}'" >&2
    exit 1
  fi
  echo "setup: installing ${need_install[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_install[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then exit 0; fi

echo "setup: starting dockerd (log: /tmp/cispo-dockerd.log)"
# setsid: the daemon outlives this script and the make that ran it.
setsid nohup dockerd >/tmp/cispo-dockerd.log 2>&1 < /dev/null &
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "setup: dockerd did not answer within 60 s; see /tmp/cispo-dockerd.log" >&2
exit 1
