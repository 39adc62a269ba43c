"""Runs inside the sandbox, around every command: hard timeout and output cap at the source.

Sent as `python3 -c <this file> CAP TIMEOUT ARGV...`, so images need nothing of ours.
Why inside: a command printing gigabytes (`yes`) must not push them through the
Docker daemon; only the head and tail (CAP bytes together) ever leave the container.
The command runs in its own session; when it ends, or at the deadline, the whole
process group gets SIGKILL, so background jobs do not outlive their command.
Processes that escape the group (setsid) cannot hold the exec open: the runner
stops reading shortly after its child ends, and the pool's reset kills them.

Output: head, tail, then one footer line `\\n<<cispo-runner>> CODE TIMED_OUT HEAD TAIL TOTAL`.
Standard library only, Python >= 3.7: it runs on whatever python3 the image has.
"""

import os
import signal
import subprocess
import sys
import threading
import time

CHUNK = 65536
DRAIN_GRACE = 1.0  # seconds to keep reading after the child ended (its output still in the pipe)


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def main():
    cap, timeout, argv = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
    half = max(cap // 2, 1)
    head, tail, total = bytearray(), bytearray(), [0]
    try:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        msg = ("cannot run %r: %s\n" % (argv[:1], e)).encode()
        sys.stdout.buffer.write(msg + b"\n<<cispo-runner>> 127 0 %d 0 %d\n" % (len(msg), len(msg)))
        return

    def read():
        while True:
            chunk = os.read(child.stdout.fileno(), CHUNK)
            if not chunk:
                return
            total[0] += len(chunk)
            room = half - len(head)
            if room > 0:
                head.extend(chunk[:room])
                chunk = chunk[room:]
            if chunk:
                tail.extend(chunk)
                if len(tail) > half:
                    del tail[: len(tail) - half]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timed_out = 0
    try:
        code = child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = 1
        kill_group(child.pid)
        code = child.wait()
    kill_group(child.pid)  # background jobs (`cmd &`, a shell fork bomb) end with their command
    deadline = time.monotonic() + DRAIN_GRACE
    reader.join(max(deadline - time.monotonic(), 0))
    out = sys.stdout.buffer
    out.write(bytes(head))
    out.write(bytes(tail))
    out.write(b"\n<<cispo-runner>> %d %d %d %d %d\n" % (code, timed_out, len(head), len(tail), total[0]))
    out.flush()
    os._exit(0)  # do not wait for the reader thread: an escaped process may hold the pipe


main()
