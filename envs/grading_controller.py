"""Runs inside the sandbox for one grading: prepare the repository, run the tests, print
the verdict. One exec per episode (the daemon's round trips are the overhead), started
under coreutils `timeout` rather than the runner: nothing of the model's can write to
this process's output, which stays small.

    python3 -I -S -c <this file>

stdin: the run's secret (32 hex digits) and a newline; the job's length (10 digits), a
newline and the job: CWD, TIMEOUT, RESET, N, the N words of the prepare step's argv,
then the test command's argv, each field ended by a NUL byte; the verdict plugin, its
length given the same way; then the bundle the prepare step unpacks. Nothing comes on
the command line, so the controller can be started before its job is known (the
sandbox keeps one on standby in a warm container).

The secret is the point. The tests, and so the model's code, run in a child process
(its own session, killed at the timeout) that never sees it: this process reads it
before anything of the model's runs, makes itself non-dumpable (a process of the same
uid can then neither read its memory nor trace it), and prints the verdict last,
marked with the secret. The child's output is kept here (its tail goes in the
verdict), so nothing it prints can pose as a verdict or flood the exec. The child
loads the plugin, under a random module name (no file of the repository can shadow
it), through PYTHONPATH and, should the task's command set its own PYTHONPATH,
through the user site directory (PYTHONUSERBASE). The child's environment pins what
makes tests flaky from one machine or run to the next (PINNED_ENV: time zone, locale,
hash seed); a task's test command may still set its own (`TZ=... pytest`).

Verdict: `\\n<<cispo-verdict SECRET>> {"prepare": {"exit_code", "output", "seconds"},
"exit_code", "timed_out", "test_seconds", "records", "dropped", "log"}` as a Python
literal (`repr`; the host parses the plugin's JSON lines in "records"); no test fields
when the prepare step failed. Then it kills every other process of its uid and becomes
`sh -c RESET` (the sandbox's reset script): the exec ends with the sandbox clean, and no
second exec is needed.

An interpreter starts for every grading, so this file imports little: json,
subprocess and threading would take longer than all the rest of its start-up
(~20 ms). Processes are forked here; the test run is watched with `select`.
Standard library only, Python >= 3.7.
"""

import ctypes
import os
import select
import signal
import sys
import time

PR_SET_DUMPABLE = 4
GRACE = 0.5  # seconds to keep reading after the test process exited
LOG_BYTES = 16 * 1024  # tail of the tests' output kept for the log
PREPARE_BYTES = 8000  # tail of the prepare step's output kept
RECORD_BYTES = 8 * 1024 * 1024  # plugin records kept (~150 bytes a phase: 3 phases of ~15k tests)
PLUGIN_HOME = "/tmp/.cispo-verdict"
# Set for the test run: the time zone, locale and str hash seed otherwise vary by image or by run.
PINNED_ENV = {"TZ": "UTC", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0"}


def read_exactly(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit("stdin ended early")
        data += chunk
    return data


def main():
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # before it holds anything worth reading
    secret = read_exactly(33)[:32].decode()
    job = read_exactly(int(read_exactly(11))).decode().split("\0")[:-1]
    plugin = read_exactly(int(read_exactly(11)))
    cwd, timeout, reset, n = job[0], float(job[1]), job[2], int(job[3])
    prepare_argv, test_argv = job[4 : 4 + n], job[4 + n :]
    verdict = {"prepare": prepare(prepare_argv)}
    if verdict["prepare"]["exit_code"] == 0:
        verdict.update(run_tests(test_argv, cwd, timeout, plugin))
    out = sys.stdout.buffer
    out.write(("\n<<cispo-verdict %s>> %r\n" % (secret, verdict)).encode())
    out.flush()
    kill_leftovers()
    os.execv("/bin/sh", ["sh", "-c", reset])  # waits for nothing of the tests': a left-behind process may hold a pipe


def spawn(argv, stdin, stdout, session=False, cwd=None, env=None, pass_fd=None):
    """Fork and exec `argv` (PATH searched) with fd 0 on `stdin`, fds 1 and 2 on `stdout`;
    in a session of its own if `session`; `pass_fd` stays open in it. Returns the pid."""
    pid = os.fork()
    if pid == 0:
        try:
            if session:
                os.setsid()
            if cwd:
                os.chdir(cwd)
            if stdin != 0:
                os.dup2(stdin, 0)
            os.dup2(stdout, 1)
            os.dup2(stdout, 2)
            if pass_fd is not None:
                os.set_inheritable(pass_fd, True)
            os.execvpe(argv[0], argv, os.environ if env is None else env)
        except BaseException as e:
            os.write(2, ("cannot run %r: %s\n" % (argv[:1], e)).encode())
        finally:
            os._exit(127)
    return pid


def exit_code(status):
    """As subprocess gives it: the exit status, or minus the signal that killed the process."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def prepare(argv):
    """The trusted step (unpack, patch): the rest of stdin is its input; its output goes in the verdict."""
    start = time.monotonic()
    read_end, write_end = os.pipe()
    pid = spawn(argv, 0, write_end)
    os.close(write_end)
    os.close(0)
    output = Capped(PREPARE_BYTES, keep="tail")
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        output.add(chunk)
    os.close(read_end)
    code = exit_code(os.waitpid(pid, 0)[1])
    return {"exit_code": code, "output": output.text(), "seconds": time.monotonic() - start}


def run_tests(argv, cwd, timeout, plugin):
    site = "%s/lib/python%d.%d/site-packages" % (PLUGIN_HOME, sys.version_info[0], sys.version_info[1])
    os.makedirs(site, exist_ok=True)
    name = "cispo_verdict_" + os.urandom(8).hex()  # a name the repository cannot have shadowed
    with open("%s/%s.py" % (site, name), "wb") as f:
        f.write(plugin)
    records_read, records_write = os.pipe()
    output_read, output_write = os.pipe()
    # A child's exit interrupts the select below: SIGCHLD writes a byte to this pipe.
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    env = dict(os.environ, **PINNED_ENV, PYTEST_PLUGINS=name, CISPO_VERDICT_FD=str(records_write),
               PYTHONUSERBASE=PLUGIN_HOME,
               PYTHONPATH=os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p))
    devnull = os.open(os.devnull, os.O_RDONLY)
    start = time.monotonic()
    pid = spawn(argv, devnull, output_write, session=True, cwd=cwd, env=env, pass_fd=records_write)
    for fd in (devnull, output_write, records_write):
        os.close(fd)
    output, records = Capped(LOG_BYTES, keep="tail"), Capped(RECORD_BYTES, keep="head")
    sinks = {output_read: output, records_read: records}
    code, timed_out, seconds, until = None, False, 0.0, start + timeout
    while True:
        if code is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done and time.monotonic() >= until:
                timed_out = True
                kill_group(pid)
                done, status = os.waitpid(pid, 0)
            if done:
                code, seconds = exit_code(status), time.monotonic() - start
                kill_group(pid)  # background jobs end with the tests
                until = time.monotonic() + GRACE  # what is left in the pipes, then stop
        left = until - time.monotonic()
        if code is not None and (not sinks or left <= 0):
            break
        for fd in select.select(list(sinks) + [wake_read], [], [], max(left, 0))[0]:
            chunk = os.read(fd, 65536)
            if fd in sinks:
                if chunk:
                    sinks[fd].add(chunk)
                else:
                    del sinks[fd]
    return {"exit_code": code, "timed_out": timed_out, "test_seconds": seconds, "records": records.text(),
            "dropped": records.dropped, "log": output.text()}


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


def kill_leftovers(rounds=50):
    """SIGKILL every other process of this uid until none is left, while this process is
    still non-dumpable: the reset shell it becomes next is dumpable, and a process of the
    model's left alive could trace it (same uid) and fake a clean reset."""
    spared, uid = (os.getpid(), os.getppid()), os.getuid()  # the parent: `timeout`, if one wraps this
    for _ in range(rounds):
        alive = False
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in spared:
                continue
            try:
                if os.stat("/proc/" + name).st_uid == uid:
                    os.kill(int(name), signal.SIGKILL)
                    alive = True
            except OSError:
                pass  # gone already
        if not alive:
            return
        time.sleep(0.02)


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


main()
