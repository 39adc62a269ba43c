"""Runs inside the sandbox for one grading: prepare the repository, run the tests, print
the verdict. One exec per episode (the daemon's round trips are the overhead), started
under coreutils `timeout` rather than the runner: nothing of the model's can write to
this process's output, which stays small.

    python3 -I -S -c <this file> '{"prepare": ARGV, "test": ARGV, "cwd": DIR, "timeout": SECONDS, "reset": SCRIPT}'

stdin: the run's secret (32 hex digits) and a newline, the verdict plugin's length (10
digits) and a newline, the plugin, then the bundle the prepare step unpacks.

The secret is the point. The tests, and so the model's code, run in a child process
(its own session, killed at the timeout) that never sees it: this process reads it
before anything of the model's runs, makes itself non-dumpable (a process of the same
uid can then neither read its memory nor trace it), and prints the verdict last,
marked with the secret. The child's output is kept here (its tail goes in the
verdict), so nothing it prints can pose as a verdict or flood the exec. The child
loads the plugin, under a random module name (no file of the repository can shadow
it), through PYTHONPATH and, should the task's command set its own PYTHONPATH,
through the user site directory (PYTHONUSERBASE).

Verdict: `\n<<cispo-verdict SECRET>> {"prepare": {"exit_code", "output", "seconds"},
"exit_code", "timed_out", "test_seconds", "records", "log"}` (no test fields when the
prepare step failed). Then, with "reset" in the job, this process becomes `sh -c SCRIPT`
(the sandbox's reset): the exec ends with the sandbox clean, and no second exec is needed.
Standard library only, Python >= 3.7.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_DUMPABLE = 4
GRACE = 0.5  # seconds to keep reading after the test process exited
LOG_BYTES = 16 * 1024  # tail of the tests' output kept for the log
RECORD_BYTES = 8 * 1024 * 1024  # plugin records kept (~150 bytes a phase: 3 phases of ~15k tests)
PLUGIN_HOME = "/tmp/.cispo-verdict"


def read_exactly(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit("stdin ended early")
        data += chunk
    return data


def main():
    job = json.loads(sys.argv[1])
    secret = read_exactly(33)[:32].decode()
    plugin = read_exactly(int(read_exactly(11)))
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    verdict = {"prepare": prepare(job["prepare"])}
    if verdict["prepare"]["exit_code"] == 0:
        verdict.update(run_tests(job["test"], job["cwd"], float(job["timeout"]), plugin))
    out = sys.stdout.buffer
    out.write(("\n<<cispo-verdict %s>> %s\n" % (secret, json.dumps(verdict))).encode())
    out.flush()
    if job.get("reset"):
        os.execv("/bin/sh", ["sh", "-c", job["reset"]])
    os._exit(0)  # do not wait for the reader threads: a left-behind process may hold a pipe


def prepare(argv):
    """The trusted step (unpack, patch): the rest of stdin is its input; its output goes in the verdict."""
    start = time.monotonic()
    res = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.close(0)
    return {"exit_code": res.returncode, "output": res.stdout[-8000:].decode(errors="replace"),
            "seconds": time.monotonic() - start}


def run_tests(argv, cwd, timeout, plugin):
    site = "%s/lib/python%d.%d/site-packages" % (PLUGIN_HOME, sys.version_info[0], sys.version_info[1])
    os.makedirs(site, exist_ok=True)
    name = "cispo_verdict_" + os.urandom(8).hex()  # a name the repository cannot have shadowed
    with open("%s/%s.py" % (site, name), "wb") as f:
        f.write(plugin)
    read_end, write_end = os.pipe()
    env = dict(os.environ, PYTEST_PLUGINS=name, CISPO_VERDICT_FD=str(write_end),
               PYTHONUSERBASE=PLUGIN_HOME,
               PYTHONPATH=os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p))
    start = time.monotonic()
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             pass_fds=(write_end,), env=env, cwd=cwd, start_new_session=True)
    os.close(write_end)
    output, records = Capped(LOG_BYTES, keep="tail"), Capped(RECORD_BYTES, keep="head")
    threads = [threading.Thread(target=copy, args=(fd, sink.add), daemon=True)
               for fd, sink in ((child.stdout.fileno(), output), (read_end, records))]
    for t in threads:
        t.start()
    timed_out = False
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(child.pid)
        code = child.wait()
    seconds = time.monotonic() - start
    kill_group(child.pid)  # background jobs end with the tests
    for t in threads:
        t.join(GRACE)
    parsed = []
    for line in records.text().splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            parsed.append({"event": "garbled", "text": line[:200]})
    if records.dropped:
        parsed.append({"event": "overflow", "dropped": records.dropped})
    return {"exit_code": code, "timed_out": timed_out, "test_seconds": seconds, "records": parsed,
            "log": output.text()}


class Capped:
    """The first or last `cap` bytes of a stream, and how many were dropped."""

    def __init__(self, cap, keep):
        self.cap, self.keep, self.data, self.dropped = cap, keep, bytearray(), 0

    def add(self, chunk):
        self.data += chunk
        extra = len(self.data) - self.cap
        if extra > 0:
            self.dropped += extra
            if self.keep == "head":
                del self.data[self.cap :]
            else:
                del self.data[:extra]

    def text(self):
        return bytes(self.data).decode(errors="replace")


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def copy(fd, sink):
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        sink(chunk)


main()
