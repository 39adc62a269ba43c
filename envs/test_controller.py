"""Runs inside the sandbox around the graded test command; the verdict comes from here.

Sent as `python3 -I -S -c <this file> ARGV...` (under the runner) with stdin: one
line holding the run's secret, then the source of the verdict plugin. The tests, and
so the model's code, run in a child process that never sees the secret: this process
reads it before the child starts, makes itself non-dumpable (a process of the same
uid can then neither read its memory nor trace it), and prints the verdict last,
marked with the secret. Output the tests print cannot pose as a verdict.

The child loads the plugin through PYTHONPATH and, should the task's command set
its own PYTHONPATH, through the user site directory (PYTHONUSERBASE). Its output is
relayed only until it exits: a process it left behind cannot push the verdict out of
the kept tail. Verdict: `\\n<<cispo-verdict SECRET>> {"exit_code", "records"}`.
Standard library only, Python >= 3.7.
"""

import ctypes
import json
import os
import subprocess
import sys
import threading

PR_SET_DUMPABLE = 4
GRACE = 0.5  # seconds to keep reading after the child exited


def main():
    secret = sys.stdin.buffer.readline().strip().decode()
    plugin = sys.stdin.buffer.read()
    os.close(0)
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    base = "/tmp/.cispo-verdict"
    site = "%s/lib/python%d.%d/site-packages" % (base, sys.version_info[0], sys.version_info[1])
    os.makedirs(site, exist_ok=True)
    with open(site + "/cispo_verdict.py", "wb") as f:
        f.write(plugin)
    read_end, write_end = os.pipe()
    env = dict(os.environ, PYTEST_PLUGINS="cispo_verdict", CISPO_VERDICT_FD=str(write_end), PYTHONUSERBASE=base,
               PYTHONPATH=os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p))
    child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, pass_fds=(write_end,), env=env)
    os.close(write_end)
    lines = []
    relaying = threading.Event()
    relaying.set()

    def show(chunk):
        if relaying.is_set():
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()

    relay = threading.Thread(target=_copy, args=(child.stdout.fileno(), show), daemon=True)
    collect = threading.Thread(target=_copy, args=(read_end, lines.append), daemon=True)
    relay.start()
    collect.start()
    code = child.wait()
    relay.join(GRACE)
    collect.join(GRACE)
    relaying.clear()
    records = []
    for line in b"".join(lines).decode(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"event": "garbled", "text": line[:200]})
    verdict = json.dumps({"exit_code": code, "records": records})
    sys.stdout.buffer.write(("\n<<cispo-verdict %s>> %s\n" % (secret, verdict)).encode())
    sys.stdout.buffer.flush()
    os._exit(0)  # do not wait for the reader threads: a left-behind process may hold a pipe


def _copy(fd, sink):
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        sink(chunk)


main()
