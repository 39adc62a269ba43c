"""Talking to the Docker daemon: one connection per process, retries, and infra errors.

A failure of the daemon (or of the machine) is not the model's fault: it surfaces as
`InfraError`, which the graders turn into status `infra_error` so the trainer masks
the sample instead of scoring it 0.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

import docker
import docker.errors
import requests.exceptions

T = TypeVar("T")

START_HINT = "start one with `bash scripts/docker_daemon.sh` (installs Debian's docker.io and starts dockerd)"


class InfraError(RuntimeError):
    """The daemon or the machine failed; the episode says nothing about the model."""


class DaemonUnavailable(InfraError):
    """No Docker daemon answers."""


_client: docker.DockerClient | None = None
_lock = threading.Lock()


def connect(base_url: str | None = None) -> docker.DockerClient:
    """The process's Docker client (from DOCKER_HOST / the default socket), created on
    first use and checked with a ping; `base_url` opens a separate, uncached client."""
    global _client
    if base_url is not None:
        return _open(base_url)
    with _lock:
        if _client is None:
            _client = _open(None)
        return _client


def _open(base_url: str | None) -> docker.DockerClient:
    try:
        client = docker.DockerClient(base_url=base_url, timeout=120) if base_url else docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise DaemonUnavailable(f"no Docker daemon answers ({e}); {START_HINT}") from e
    return client


# Errors worth another try: the daemon was busy, restarting, or the socket dropped.
_TRANSIENT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError)


def _is_transient(e: Exception) -> bool:
    if isinstance(e, _TRANSIENT):
        return True
    if isinstance(e, docker.errors.APIError) and not isinstance(e, docker.errors.NotFound):
        return e.status_code is None or e.status_code >= 500
    return False


def with_retries(fn: Callable[[], T], what: str, attempts: int = 4, first_delay: float = 0.5) -> T:
    """Call `fn`, retrying transient daemon errors with exponential backoff.

    Anything still failing after `attempts` tries, and any non-transient daemon error
    (a 4xx such as a missing image), becomes an `InfraError` naming `what` failed.
    """
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified right below
            if not isinstance(e, (docker.errors.DockerException, *_TRANSIENT)):
                raise
            if not _is_transient(e) or attempt == attempts:
                raise InfraError(f"{what} failed after {attempt} attempt(s): {e}") from e
            time.sleep(delay)
            delay *= 2
    raise ValueError(f"with_retries needs attempts >= 1, got {attempts}")
