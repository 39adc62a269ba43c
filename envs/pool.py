"""A warm pool of sandboxes per image, with a cap on how many run at once.

Creating a container costs about half a second of daemon time; an episode's own
commands cost a fraction of that. So sandboxes are kept running and reset between
uses (every process of the sandbox user killed, every writable place emptied: the
root is read-only, so that is the whole state). The reset runs in a background
thread after release, off the episode's critical path: with more warm containers
than slots, the next episode takes another one while this one is being reset. (A
grading's exec resets its sandbox itself once it has answered; the background thread
then only waits for that and starts the next grading's controller on standby: see
`Sandbox.exec(resets_after=)`.) A sandbox whose reset
fails, or that was killed, is removed and replaced.
"""

from __future__ import annotations

import atexit
import threading
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from cispo.envs.docker_daemon import InfraError, connect
from cispo.envs.sandbox import Sandbox, SandboxConfig, sweep_leftovers

_swept = threading.Event()  # the leftover sweep runs once per process


@dataclass
class PoolStats:
    created: int = 0  # containers started
    reused: int = 0  # acquisitions served by a warm container
    reset_failures: int = 0  # resets that failed (the container was replaced)


class SandboxPool:
    """Hands out sandboxes: `with pool.sandbox(image) as sb: sb.exec([...])`.

    `warm`: containers kept per image between uses (default: twice `max_concurrency`,
    so that resets overlap the next uses). `max_concurrency`: sandboxes in use at
    once (others wait). `reuse=False` gives a cold container per use (the benchmark's
    baseline, and the choice when a task demands a never-used container).
    """

    def __init__(
        self, config: SandboxConfig | None = None, warm: int | None = None, max_concurrency: int = 4, reuse: bool = True
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.config = config or SandboxConfig()
        self.warm = 2 * max_concurrency if warm is None else warm
        self.reuse = reuse
        self.stats = PoolStats()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._lock = threading.Condition()
        self._idle: dict[str, list[Sandbox]] = defaultdict(list)
        self._recycling: dict[str, int] = defaultdict(int)  # containers being reset or removed
        self._closed = False
        if not _swept.is_set():
            sweep_leftovers(connect())
            _swept.set()
        atexit.register(self.close)

    @contextmanager
    def sandbox(self, image: str | None = None, discard_after: bool = False) -> Iterator[Sandbox]:
        """A sandbox for one use. `discard_after`: remove the container afterwards instead of
        resetting it, for uses that run the model's commands outside the grading controller (an
        agent episode): a process they leave behind could trace the reset's shell (same uid, and
        this host lets one uid trace another) and outlive the reset into a later grading."""
        image = image or self.config.image
        with self._slots:
            sb = self._take(image)
            try:
                yield sb
            finally:
                self._give_back(sb, reusable=not discard_after)

    def prewarm(self, image: str | None = None, n: int | None = None) -> None:
        """Start idle containers up to `n` (default: `warm`) for `image`."""
        image = image or self.config.image
        want = self.warm if n is None else n
        while len(self._idle[image]) < want:
            sb = Sandbox.create(self.config, image)
            with self._lock:
                self.stats.created += 1
                self._idle[image].append(sb)

    def drain(self) -> None:
        """Wait until no container is being reset or removed."""
        with self._lock:
            self._lock.wait_for(lambda: not any(self._recycling.values()))

    def close(self) -> None:
        """Wait for resets in flight, then remove every container this pool holds."""
        with self._lock:
            self._closed = True
            self._lock.wait_for(lambda: not any(self._recycling.values()))
            sandboxes = [sb for idle in self._idle.values() for sb in idle]
            self._idle.clear()
        for sb in sandboxes:
            sb.remove()
        atexit.unregister(self.close)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _take(self, image: str) -> Sandbox:
        """A warm container if one is idle, or soon will be (a reset takes ~0.1 s, a start
        ~0.3 s); else a new one."""
        with self._lock:
            while True:
                if self._closed:
                    raise RuntimeError("sandbox pool is closed")
                if self.reuse and self._idle[image]:
                    self.stats.reused += 1
                    return self._idle[image].pop()
                if not self.reuse or not self._recycling[image]:
                    break
                self._lock.wait()
        sb = Sandbox.create(self.config, image)
        with self._lock:
            self.stats.created += 1
        return sb

    def _give_back(self, sb: Sandbox, reusable: bool) -> None:
        """Reset (or, cold or not `reusable`, remove) in the background; the slot is free at once."""
        with self._lock:
            self._recycling[sb.image] += 1
        threading.Thread(target=self._recycle, args=(sb, self.reuse and reusable), daemon=True).start()

    def _recycle(self, sb: Sandbox, reusable: bool) -> None:
        keep = False
        try:
            ok = reusable and sb.reset()
            with self._lock:
                keep = ok and not self._closed and len(self._idle[sb.image]) < self.warm
                if reusable and not ok:
                    self.stats.reset_failures += 1
            if not keep:
                sb.remove()
        except InfraError:
            pass  # the daemon failed to remove it: the sweep of a later process will
        finally:
            with self._lock:
                if keep:
                    self._idle[sb.image].append(sb)
                self._recycling[sb.image] -= 1
                self._lock.notify_all()

_shared: SandboxPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> SandboxPool:
    """The process's pool for reward functions, which get no pool argument
    (`fn(prompt, response, metadata)`); created with defaults on first use unless
    the controller installed one with `set_shared_pool`."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared._closed:
            _shared = SandboxPool()
        return _shared


def set_shared_pool(pool: SandboxPool) -> None:
    global _shared
    with _shared_lock:
        _shared = pool
