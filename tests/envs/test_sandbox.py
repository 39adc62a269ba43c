"""The sandbox container against the real daemon: limits, timeouts, output caps, reset, sweep, retries."""

import json
import shlex
import threading

import docker.errors
import pytest
import requests

from cispo.envs.docker_daemon import START_HINT, DaemonUnavailable, InfraError, connect, with_retries
from cispo.envs.image import DEFAULT_IMAGE, debian_mirror
from cispo.envs.pool import SandboxPool
from cispo.envs.sandbox import LABEL, RESET_SCRIPT, owner_labels, sweep_leftovers


def _our_processes(sb) -> list[str]:
    """Names of the sandbox user's processes (PID 1's `sleep infinity` is nobody's)."""
    return sb.exec(["sh", "-c", "for p in /proc/[0-9]*; do [ -O $p ] && cat $p/comm; done"]).output.split()


@pytest.fixture(scope="module")
def sb(pool):
    with pool.sandbox() as s:
        yield s


def test_locked_down(sb):
    res = sb.exec(["sh", "-c", "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; ls /sys/class/net; cat /proc/1/status | grep '^Uid'"])
    lines = res.output.split("\n")
    assert lines[0] == "10001"  # non-root
    assert "CapEff:\t0000000000000000" in res.output and "CapBnd:\t0000000000000000" in res.output
    assert "NoNewPrivs:\t1" in res.output
    assert "lo" in lines and "eth0" not in res.output  # no network interface but loopback
    assert "Uid:\t65534" in res.output  # PID 1 is nobody's, not ours
    attrs = sb.container.attrs["HostConfig"]
    assert attrs["NetworkMode"] == "none" and attrs["ReadonlyRootfs"] and attrs["PidsLimit"] == 128
    assert attrs["Memory"] == 512 * 2**20 and attrs["CapDrop"] == ["ALL"]


def test_timeout_kills_the_whole_group(sb):
    res = sb.exec(["sh", "-c", "sleep 100 & sleep 100; echo never"], timeout=1)
    assert res.timed_out and res.exit_code == -9 and "never" not in res.output
    assert "sleep" not in _our_processes(sb)


def test_escaped_process_cannot_hold_the_exec(sb):
    res = sb.exec(["sh", "-c", "setsid sh -c 'sleep 100' & echo started"], timeout=5)
    assert res.ok and res.output.strip() == "started"


def test_output_is_capped_at_the_source(sb):
    res = sb.exec(["sh", "-c", "yes | head -c 50000000; echo; echo END"], output_cap=4096)
    assert res.ok and res.truncated and res.total_bytes > 50_000_000
    assert res.output.startswith("y\ny\n") and res.output.rstrip().endswith("END")
    assert "bytes elided" in res.output and len(res.output) < 4096 + 100


def test_arguments_arrive_unmangled(sb):
    weird = ['a b', '"q"', "it's", "[x-1]", "$HOME", "*", ""]
    res = sb.exec(["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *weird])
    assert res.output.strip() == json.dumps(weird)


def test_read_only_root_and_capped_tmpfs(sb):
    res = sb.exec(["sh", "-c", "touch /etc/x /usr/x 2>&1; touch /workspace/ok /tmp/ok && echo writable"])
    assert res.output.count("Read-only file system") == 2 and "writable" in res.output
    res = sb.exec(["sh", "-c", "head -c 200000000 /dev/zero > /tmp/big; echo $?; ls -l /tmp/big"])
    assert "No space left" in res.output  # 128m tmpfs


def test_reset_kills_processes_and_empties_workspace(pool):
    with pool.sandbox() as s:
        s.exec(["sh", "-c", "setsid sleep 1000 & mkdir -p /workspace/d && chmod 000 /workspace/d; touch /tmp/t /home/sandbox/h"])
        assert s.reset()
        listing = s.exec(["ls", "-A", "/workspace", "/tmp", "/home/sandbox"]).output
        assert listing.split() == ["/home/sandbox:", "/tmp:", "/workspace:"]
        # Only PID 1's `sleep infinity` (nobody's) is left; the setsid sleep of ours is gone.
        assert "sleep" not in _our_processes(s)


def test_command_that_resets_the_sandbox_after_its_marker(pool):
    """The grading controller's way: one exec that answers, then resets; reset() waits for it,
    then starts the program again, on standby for its stdin."""
    with pool.sandbox() as s:
        script = ("read -r word || exit 9; setsid sleep 1000 & touch /workspace/w /tmp/t; echo \"<<done>> $word\"; "
                  f"exec sh -c {shlex.quote(RESET_SCRIPT)}")
        res = s.exec(["sh", "-c", script], stdin=b"one\n", trusted=True, resets_after=b"<<done>> ")
        assert res.ok and res.output.strip() == "<<done>> one"
        with pytest.raises(RuntimeError, match="resetting itself"):
            s.exec(["true"])
        assert s.reset()
        assert s.exec(["ls", "-A", "/workspace", "/tmp"]).output.split() == ["/tmp:", "/workspace:"]
        assert "sleep" not in _our_processes(s)
        # The standby was dropped by that other command (its stdin ended); now a fresh one serves.
        assert s.exec(["sh", "-c", script], stdin=b"two\n", trusted=True, resets_after=b"<<done>> ").output.strip() == "<<done>> two"
        assert s.reset() and s._standby is not None
        standby_id = s._standby[1]
        res = s.exec(["sh", "-c", script], stdin=b"three\n", trusted=True, resets_after=b"<<done>> ")
        assert res.output.strip() == "<<done>> three" and s._resetting[1] == standby_id  # the standby served
        assert s.reset()
        failing = s.exec(["sh", "-c", "read -r x; echo '<<done>>'; exit 4"], stdin=b"\n", trusted=True, resets_after=b"<<done>>")
        assert failing.ok and not s.reset()  # a reset that fails is reported, and the pool replaces the sandbox


def test_pool_reuses_and_limits_concurrency():
    with SandboxPool(max_concurrency=2) as p:
        inside, peak, lock = [0], [0], threading.Lock()

        def use():
            with p.sandbox() as s:
                with lock:
                    inside[0] += 1
                    peak[0] = max(peak[0], inside[0])
                s.exec(["true"])
                with lock:
                    inside[0] -= 1

        threads = [threading.Thread(target=use) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert peak[0] <= 2
        assert p.stats.created <= 4 and p.stats.reused >= 2 and p.stats.reset_failures == 0


def test_dead_sandbox_is_replaced(pool):
    with pool.sandbox() as s:
        s.kill()
        with pytest.raises(InfraError):
            s.exec(["true"])
    with pool.sandbox() as s2:
        assert s2.exec(["true"]).ok


def test_sweep_removes_only_dead_owners():
    client = connect()
    dead = {**owner_labels(), f"{LABEL}.pid": "999999999", f"{LABEL}.pid-start": "1"}
    orphan = client.containers.create(DEFAULT_IMAGE, ["true"], labels=dead)
    mine = client.containers.create(DEFAULT_IMAGE, ["true"], labels=owner_labels())
    try:
        assert sweep_leftovers(client) >= 1
        with pytest.raises(docker.errors.NotFound):
            orphan.reload()
        mine.reload()  # a live owner's container is left alone
    finally:
        mine.remove(force=True)


def test_retries_then_infra_error():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise docker.errors.APIError("busy", response=_Resp(500))
        return "ok"

    assert with_retries(flaky, "flaky", first_delay=0.01) == "ok" and len(calls) == 3
    with pytest.raises(InfraError, match="gone failed after 1 attempt"):
        with_retries(lambda: (_ for _ in ()).throw(docker.errors.NotFound("no", response=_Resp(404))), "gone")
    with pytest.raises(InfraError, match="after 2 attempt"):
        with_retries(lambda: (_ for _ in ()).throw(requests.exceptions.ConnectionError("down")), "down", attempts=2, first_delay=0.01)


def test_missing_engine_says_how_to_start_one(tmp_path):
    with pytest.raises(DaemonUnavailable) as e:
        connect(f"unix://{tmp_path}/no-docker.sock")
    assert START_HINT in str(e.value)


def test_mirror_comes_from_apt_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\n# http://example.invalid/comment\nURIs: http://mirror.one/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.two/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror((deb822,)) == "http://mirror.two/debian"
    listfile = tmp_path / "sources.list"
    listfile.write_text("# deb http://no/ bookworm main\ndeb [arch=amd64] http://mirror.three/debian bookworm main\n")
    assert debian_mirror((tmp_path / "absent.sources", listfile)) == "http://mirror.three/debian"
    with pytest.raises(RuntimeError, match="no apt source"):
        debian_mirror((tmp_path / "absent.sources",))


class _Resp:
    def __init__(self, code):
        self.status_code = code
        self.reason = "test"
        self.url = "http://docker/test"


def test_build_image_if_missing_is_quick():
    from cispo.envs.cli import main

    assert main(["build-image", "--if-missing"]) == 0
