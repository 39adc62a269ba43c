"""One locked-down container and the commands run in it.

What a sandbox may never do is settled when the container is created: no network,
capped memory / pids / CPU, a read-only root with size-capped tmpfs for the only
writable places (so a runaway write fills RAM we capped, not the host's disk), all
capabilities dropped, no-new-privileges. PID 1 (docker-init) runs as `nobody` and
commands as the sandbox uid, so a command can neither kill PID 1 nor signal anything
it did not start.

Every command of the model's goes through `sandbox_runner.py` (timeout and output
cap inside the container), programs of ours through coreutils `timeout` or their own
bound (see `Sandbox.exec`), and every one has a client-side deadline: the SDK's
`exec_run` has no timeout, so a wedged exec would hang the trainer. Past the deadline
the container is killed.

One exec per use of a warm sandbox: the grading controller resets the sandbox itself
after its verdict, and is then started again on standby for the next grading (the
exec's start, ~50 ms of the daemon's time, is the costliest part of a warm episode).

Containers carry labels naming the owning process; `sweep_leftovers` removes those
whose owner died (a crash, a kill -9), never those of a live process beside us.
"""

from __future__ import annotations

import io
import os
import socket
import tarfile
import struct
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from docker.types import Ulimit

from cispo.envs.docker_daemon import InfraError, connect, with_retries
from cispo.envs.image import DEFAULT_IMAGE, SANDBOX_UID

LABEL = "cispo.sandbox"
WORKSPACE = "/workspace"
HOME = "/home/sandbox"
NOBODY = "65534:65534"
USER = f"{SANDBOX_UID}:{SANDBOX_UID}"
_RUNNER = (Path(__file__).parent / "sandbox_runner.py").read_text()
_FOOTER = b"\n<<cispo-runner>> "
# Bytes allowed past the cap before we decide something bypassed the runner.
_SLACK = 64 * 1024


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandbox container (meant to be mirrored by a conf group `env/sandbox`)."""

    image: str = DEFAULT_IMAGE  # default image; a task may name its own
    memory: str = "1g"  # RAM cap, tmpfs pages included; no swap
    cpus: float = 1.0  # CPU share (docker --cpus)
    pids: int = 256  # process cap: a fork bomb stops here
    workspace_size: str = "1g"  # tmpfs at /workspace (the repository lives here)
    tmp_size: str = "256m"  # tmpfs at /tmp and at the home directory
    nofile: int = 4096  # open files per process
    timeout: float = 60.0  # default seconds per command
    output_cap: int = 64 * 1024  # bytes of output kept per command: head + tail halves
    client_grace: float = 20.0  # seconds past a command's timeout before the client kills the container


@dataclass
class ExecResult:
    exit_code: int  # negative: killed by that signal (-9 after a timeout or an OOM kill)
    output: str  # stdout and stderr interleaved; head + marker + tail when truncated
    timed_out: bool
    total_bytes: int  # output bytes the command produced, kept or not
    seconds: float
    truncated: bool = False  # the middle of the output was dropped

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _process_start(pid: int) -> str:
    """Start time of a process (clock ticks since boot): tells a live owner from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_labels() -> dict[str, str]:
    pid = os.getpid()
    return {
        LABEL: "1",
        f"{LABEL}.host": socket.gethostname(),
        f"{LABEL}.pid": str(pid),
        f"{LABEL}.pid-start": _process_start(pid),
    }


def sweep_leftovers(client: docker.DockerClient | None = None) -> int:
    """Remove labelled containers whose owning process on this host is gone; returns how many."""
    client = client or connect()
    host = socket.gethostname()
    removed = 0
    for c in with_retries(lambda: client.containers.list(all=True, filters={"label": LABEL}), "list containers"):
        labels = c.labels
        if labels.get(f"{LABEL}.host") != host:
            continue
        pid = int(labels.get(f"{LABEL}.pid", "0"))
        if pid and _process_start(pid) == labels.get(f"{LABEL}.pid-start") != "":
            continue
        try:
            c.remove(force=True)
            removed += 1
        except docker.errors.NotFound:
            pass  # another process removed it first
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: "removal already in progress" by another process
                raise
    return removed


class Sandbox:
    """A running, locked-down container; create with `Sandbox.create`, end with `remove`."""

    def __init__(self, container, config: SandboxConfig, image: str):
        self.container = container
        self.config = config
        self.image = image
        self.dead = False  # set once the container was killed or found gone
        # A `resets_after` command resetting the sandbox: its start key, exec id, stream, deadline.
        self._resetting: tuple[tuple, str, socket.socket, float] | None = None
        # That command started again after its reset, waiting for its stdin: start key, exec id, stream.
        self._standby: tuple[tuple, str, socket.socket] | None = None

    @classmethod
    def create(cls, config: SandboxConfig, image: str | None = None) -> "Sandbox":
        client = connect()
        image = image or config.image
        _ensure_image(client, image)
        tmpfs_opts = "rw,exec,nosuid,nodev"
        kwargs = dict(
            command=["sleep", "infinity"],
            detach=True,
            name=f"cispo-sbx-{uuid.uuid4().hex[:12]}",
            user=NOBODY,
            init=True,
            network_mode="none",
            mem_limit=config.memory,
            memswap_limit=config.memory,
            nano_cpus=int(config.cpus * 1e9),
            pids_limit=config.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={
                WORKSPACE: f"{tmpfs_opts},size={config.workspace_size},uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0755",
                HOME: f"{tmpfs_opts},size={config.tmp_size},uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0755",
                "/tmp": f"{tmpfs_opts},size={config.tmp_size},mode=1777",
            },
            ulimits=[Ulimit(name="nofile", soft=config.nofile, hard=config.nofile), Ulimit(name="core", soft=0, hard=0)],
            working_dir=WORKSPACE,
            labels={**owner_labels(), f"{LABEL}.image": image},
            environment={"HOME": HOME, "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"},
        )
        container = with_retries(lambda: client.containers.run(image, **kwargs), f"start a sandbox from {image}")
        return cls(container, config, image)

    @property
    def id(self) -> str:
        return self.container.id

    def exec(
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        workdir: str = WORKSPACE,
        env: dict[str, str] | None = None,
        output_cap: int | None = None,
        trusted: bool = False,
        resets_after: bytes | None = None,
    ) -> ExecResult:
        """Run `argv` (no shell: arguments reach the program unmangled) as the sandbox user.

        `trusted`: a program of ours whose output is small (unpacking, the reset, the
        grading controller, which holds the tests' output itself): it skips the Python
        runner (one interpreter start, ~30 ms) for coreutils `timeout`, which kills
        only that program; the client-side cap still holds.

        `resets_after` (trusted only): the program prints this marker and the rest of its
        line last, then resets the sandbox itself (`RESET_SCRIPT`; the grading controller
        does). The call returns at that line, exit code 0, and `reset()` only waits for the
        program to finish: one exec per use instead of two, the reset off the caller's path.
        Once the reset is done, `reset()` starts the same program again, on standby for its
        stdin, so the next such call skips the exec's start (the daemon's costliest part).
        So the program must do nothing before its stdin arrives (and exit if it ends), and
        runs without coreutils `timeout` (its timeout is not known yet): it bounds its own
        run, and past the client's deadline the container is killed.

        Raises `InfraError` when the daemon fails or the container is gone; a command
        that misbehaves (times out, floods output, gets OOM-killed) is a normal result.
        """
        if self.dead:
            raise InfraError(f"sandbox {self.container.name} is gone")
        if self._resetting is not None:
            raise RuntimeError(f"sandbox {self.container.name} is resetting itself: call reset() first")
        if resets_after is not None and not (trusted and stdin is not None):
            raise ValueError("resets_after is for trusted programs that read stdin")
        timeout = self.config.timeout if timeout is None else timeout
        cap = self.config.output_cap if output_cap is None else output_cap
        if resets_after is not None:
            cmd = list(argv)
        elif trusted:
            cmd = ["timeout", "-s", "KILL", f"{timeout:g}", *argv]
        else:
            cmd = ["python3", "-I", "-S", "-c", _RUNNER, str(cap), str(timeout), *argv]
        key = (tuple(cmd), workdir, tuple(sorted((env or {}).items())), stdin is not None)
        api = connect().api
        start = time.monotonic()
        deadline = start + timeout + self.config.client_grace
        standby, self._standby = self._standby, None
        if standby is not None and standby[0] != key:
            standby[2].close()  # its stdin ends: it exits without having done anything
            standby = None
        try:
            exec_id, sock = standby[1:] if standby is not None else self._start(key)
        except InfraError:
            if self._pids_exhausted():  # the command's own doing (a fork bomb that escaped its group)
                return ExecResult(-1, "[the sandbox cannot start a process: its process limit is reached]", False, 0, 0.0)
            raise
        raw: socket.socket = getattr(sock, "_sock", sock)
        try:
            if stdin is not None:
                raw.settimeout(max(deadline - time.monotonic(), 1.0))
                raw.sendall(stdin)
                raw.shutdown(socket.SHUT_WR)
            payload, stopped = _read_frames(raw, deadline, limit=cap + _SLACK, stop_at=resets_after)
        except (OSError, _Overflow) as e:
            sock.close()
            self.kill()
            seconds = time.monotonic() - start
            if isinstance(e, _Overflow):
                return ExecResult(-9, "[output bypassed the sandbox's cap: container killed]", False, e.total, seconds)
            if isinstance(e, socket.timeout):
                return ExecResult(-9, "[client deadline passed: container killed]", True, 0, seconds)
            raise InfraError(f"exec in {self.container.name} lost its connection: {e}") from e
        seconds = time.monotonic() - start
        if stopped:  # the program is resetting the sandbox now; reset() waits for it
            self._resetting = (key, exec_id, sock, deadline)
            return ExecResult(0, payload.decode(errors="replace"), False, len(payload), seconds)
        sock.close()
        if trusted:
            code = with_retries(lambda: api.exec_inspect(exec_id)["ExitCode"], "exec_inspect")
            if code in (None, 137):
                self._check_alive()
            text = payload.decode(errors="replace")
            return ExecResult(code, text, code == 137 and seconds >= timeout, len(payload), seconds)
        if _FOOTER not in payload:
            self._check_alive()
        return _parse(payload, seconds, cap)

    def _start(self, key: tuple) -> tuple[str, socket.socket]:
        """Create and start an exec (see `exec` for the key); its id and stream."""
        cmd, workdir, env, stdin = key
        api = connect().api
        exec_id = with_retries(
            lambda: api.exec_create(self.id, list(cmd), stdin=stdin, user=USER, workdir=workdir, environment=dict(env))["Id"],
            "exec_create",
        )
        return exec_id, with_retries(lambda: api.exec_start(exec_id, socket=True), "exec_start")

    def _check_alive(self, settle: float = 1.0) -> None:
        """Raise `InfraError` if the container stopped (killed from outside, the daemon restarted):
        a command cut short that way says nothing about what it ran. The daemon may report a
        killed container as running for a moment after the exec's stream closed: polled up to `settle` s."""
        deadline = time.monotonic() + settle
        while True:
            try:
                self.container.reload()
                running = self.container.attrs["State"]["Running"]
            except docker.errors.NotFound:
                running = False
            except docker.errors.DockerException as e:
                raise InfraError(f"cannot inspect {self.container.name}: {e}") from e
            if not running:
                self.dead = True
                raise InfraError(f"sandbox {self.container.name} stopped during a command")
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)

    def _pids_exhausted(self) -> bool:
        try:
            stats = self.container.stats(stream=False, one_shot=True)
            return stats["pids_stats"]["current"] >= self.config.pids - 2
        except (docker.errors.DockerException, KeyError, TypeError):
            return False

    def write_tar(self, data: bytes, dest: str = WORKSPACE, timeout: float = 120.0) -> None:
        """Unpack a tar archive (streamed on stdin) into `dest` as the sandbox user.

        Why not `put_archive`: the daemon writes into the image layer, under our tmpfs
        mounts, where the container never sees it (moby#22020), and the root is read-only.
        """
        res = self.exec(["tar", "-x", "--no-same-owner", "-C", dest], stdin=data, timeout=timeout, trusted=True)
        if not res.ok:
            raise InfraError(f"unpacking an archive into {dest} failed (exit {res.exit_code}): {res.output[-500:]}")

    def reset(self) -> bool:
        """Kill every process of the sandbox user and empty every writable place (after a
        `resets_after` command: wait for the command, which does that itself).

        Returns False when the sandbox could not be brought back to a clean state
        (the caller then removes it).
        """
        if self.dead:
            return False
        if self._resetting is not None:
            return self._await_own_reset()
        try:
            res = self.exec(["sh", "-c", RESET_SCRIPT], timeout=30.0, workdir="/", trusted=True)
        except InfraError:
            return False
        return res.ok

    def _await_own_reset(self, settle: float = 2.0) -> bool:
        """The end of a `resets_after` command: its stream closed and its exit status 0; then
        the command is started again, on standby for the next use.
        The daemon may record the status a moment after the stream closed: polled up to `settle` s."""
        key, exec_id, sock, deadline = self._resetting
        self._resetting = None
        api = connect().api
        try:
            _drain(getattr(sock, "_sock", sock), deadline, limit=_SLACK)
            settled = time.monotonic() + settle
            while (state := with_retries(lambda: api.exec_inspect(exec_id), "exec_inspect"))["Running"]:
                if time.monotonic() > settled:
                    return False
                time.sleep(0.01)
        except (OSError, _Overflow, InfraError):
            return False
        finally:
            sock.close()
        if state["ExitCode"] != 0:
            return False
        try:
            self._standby = (key, *self._start(key))
        except InfraError:
            pass  # the next use starts it itself
        return True

    def kill(self) -> None:
        self.dead = True
        try:
            self.container.kill()
        except docker.errors.DockerException:
            pass

    def remove(self) -> None:
        self.dead = True
        for held in (self._resetting, self._standby):
            if held is not None:
                held[2].close()
        self._resetting = self._standby = None
        try:
            with_retries(lambda: self.container.remove(force=True), f"remove {self.container.name}")
        except InfraError as e:
            if not isinstance(e.__cause__, docker.errors.NotFound):
                raise


# Reset, as the sandbox user, in shell builtins (no interpreter to start: it runs after
# every use): SIGKILL every process of ours but this shell and its parent (`timeout`),
# until none is left; then empty the tmpfs mounts and /dev/shm (one chmod, one rm: each
# process started costs). Exit 3: processes survive SIGKILL; 4: something could not be removed.
RESET_SCRIPT = r"""
me=$$ parent=$PPID rounds=0
while :; do
  alive=
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    if [ "$p" != "$me" ] && [ "$p" != "$parent" ] && [ -O "$d" ]; then kill -9 "$p" 2>/dev/null && alive=1; fi
  done
  [ -z "$alive" ] && break
  rounds=$((rounds + 1))
  [ "$rounds" -ge 50 ] && exit 3
  sleep 0.02
done
roots="/workspace /tmp /home/sandbox /dev/shm"
chmod -R u+rwx $roots 2>/dev/null
for root in $roots; do set -- "$@" "$root"/* "$root"/.[!.]* "$root"/..?*; done
rm -rf -- "$@"
[ -z "$(find $roots -mindepth 1 -print -quit)" ] || exit 4
"""


def tar_files(files: dict[str, str]) -> bytes:
    """A tar archive of text files (relative path -> content), for `Sandbox.write_tar`."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


class _Overflow(Exception):
    def __init__(self, total: int):
        self.total = total


def _read_frames(raw: socket.socket, deadline: float, limit: int, stop_at: bytes | None = None) -> tuple[bytes, bool]:
    """Read Docker's multiplexed stream (8-byte headers) until EOF, the deadline or `limit`
    bytes, or a complete line holding `stop_at`; True in second place in that last case."""
    buf = bytearray()
    out = bytearray()
    at, searched = -1, 0  # where `stop_at` starts in `out`; how far `out` was searched

    def fill(n: int) -> bool:
        while len(buf) < n:
            chunk = _recv(raw, deadline)
            if not chunk:
                return False
            buf.extend(chunk)
        return True

    while fill(8):
        size = struct.unpack(">I", bytes(buf[4:8]))[0]
        if not fill(8 + size):
            break
        out.extend(buf[8 : 8 + size])
        del buf[: 8 + size]
        if len(out) > limit:
            raise _Overflow(len(out))
        if stop_at is not None:
            if at < 0:  # search only what is new, overlapping by the marker's length
                at = out.find(stop_at, max(searched - len(stop_at), 0))
                searched = at + len(stop_at) if at >= 0 else len(out)
            if at >= 0 and out.find(b"\n", searched) >= 0:
                return bytes(out), True
            searched = len(out)
    return bytes(out), False


def _recv(raw: socket.socket, deadline: float) -> bytes:
    """The next bytes of a stream (b"" at its end); socket.timeout past the deadline."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("client deadline")
    raw.settimeout(left)
    return raw.recv(65536)


def _drain(raw: socket.socket, deadline: float, limit: int) -> None:
    """Read a stream to its end, by the deadline and within `limit` bytes."""
    total = 0
    while chunk := _recv(raw, deadline):
        total += len(chunk)
        if total > limit:
            raise _Overflow(total)


def _parse(payload: bytes, seconds: float, cap: int) -> ExecResult:
    at = payload.rfind(_FOOTER)
    if at < 0:
        # The runner itself was killed (by the command: same uid) or could not start.
        return ExecResult(-9, payload[-cap:].decode(errors="replace"), False, len(payload), seconds)
    fields = payload[at + len(_FOOTER) :].split()
    code, timed_out, n_head, n_tail, total = (int(x) for x in fields[:5])
    head, tail = payload[:n_head], payload[n_head : n_head + n_tail]
    truncated = total > n_head + n_tail
    if truncated:
        text = f"{head.decode(errors='replace')}\n[... {total - n_head - n_tail} bytes elided ...]\n{tail.decode(errors='replace')}"
    else:
        text = (head + tail).decode(errors="replace")
    return ExecResult(code, text, bool(timed_out), total, seconds, truncated)


def _ensure_image(client: docker.DockerClient, image: str) -> None:
    """A missing image is pulled once; if that fails the task cannot run here (an infra error)."""
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.DockerException as e:
        raise InfraError(f"cannot inspect image {image}: {e}") from e
    try:
        client.images.pull(image)
    except docker.errors.DockerException as e:
        hint = " (build it with `cispo-env build-image`)" if image == DEFAULT_IMAGE else ""
        raise InfraError(f"image {image} is not on this machine and pulling it failed: {e}{hint}") from e


