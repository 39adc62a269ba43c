"""Math reward on math-verify, safe to call from the reward worker's threads.

math-verify bounds its parsing and its comparisons with signal.alarm, which works only on a
process's main thread; the reward worker calls rewards from a thread of its own, where math-verify
then raises (and wrappers that caught that scored every sample 0: verl users lost whole runs that
way). So math-verify runs here with its signal timeouts off, in a child process this module keeps
(one per process that scores, started on first use): the caller waits on it with a hard deadline
and kills it past that, and the child caps its own CPU time and memory, so a check cannot outlive
a caller that was killed while waiting.

What a response gets:
- its final answer (\\boxed{}, "the answer is ...", LaTeX or plain) equals metadata["answer"]:
  1.0, status `correct`; it differs: 0.0, `wrong`; none found: 0.0, `no_answer`;
- it holds a number of over MAX_DIGITS digits or brackets nested over MAX_NESTING deep: 0.0,
  `refused`, with a `reason`, unchecked. sympy takes seconds to minutes on such input (time
  doubles with each level of nested fractions) and no sane answer looks like that, so the
  policy is told it is wrong rather than the sample being masked;
- the checker ran past CHECK_TIMEOUT_S, died, or raised: MathVerifyError. The worker records
  it as an error and masks the sample: a failed check is never passed off as a wrong answer.
  A short input can still blow up (9^{9^{9^{9}}} is evaluated exactly), hence the deadline.
The status is logged as env/status_<name>_frac.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import traceback

from math_verify import parse, verify  # imported here too, so a missing package fails at load

MAX_DIGITS = 1000
MAX_NESTING = 12  # nested \frac 12 deep takes ~1 s to compare, 16 deep ~8 s, 20 deep minutes
CHECK_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0  # a fresh checker imports sympy and math-verify: ~1 s idle, more when busy
CHECKER_MEMORY_BYTES = 4 << 30
EXTRACTED_CHARS = 200  # the extracted answer is kept this short in the details

_DIGIT_RUNS = re.compile(r"\d+")
_BRACKETS = re.compile(r"[{}()\[\]]")


class MathVerifyError(RuntimeError):
    """The checker failed on a response (timed out, died or raised): the sample cannot be scored."""


def math_verify_reward(prompt: str, response: str, metadata: dict) -> dict:
    """1.0 when the response's final answer equals metadata["answer"] by math-verify, else 0.0."""
    answer = _ground_truth(metadata)
    reason = _refusal(response)
    if reason:
        return {"score": 0.0, "pass": False, "extracted": "", "status": "refused", "reason": reason}
    out = _CHECKER.check(response, answer)
    if not out["answer_parsed"]:
        raise ValueError(f"metadata['answer']={answer!r}: math-verify finds no answer in it")
    status = "correct" if out["pass"] else "wrong" if out["found"] else "no_answer"
    return {"score": float(out["pass"]), "pass": out["pass"], "extracted": out["extracted"], "status": status}


def _ground_truth(metadata: dict) -> str:
    if "answer" not in metadata:
        raise ValueError(f"math_verify_reward needs metadata['answer'] (the ground truth; task.answer_key "
                         f"names its column); this sample's metadata has keys {sorted(metadata)}")
    answer = metadata["answer"]
    if isinstance(answer, bool) or not isinstance(answer, (str, numbers.Real)):
        raise ValueError(f"metadata['answer'] must be a string or a number, got {type(answer).__name__}: {answer!r}")
    return str(answer)


def _refusal(response: str) -> str | None:
    """Why the response is scored 0 unchecked, or None to check it."""
    digits = max(map(len, _DIGIT_RUNS.findall(response)), default=0)
    if digits > MAX_DIGITS:
        return f"a number of {digits} digits (over {MAX_DIGITS}): not checked"
    depth = deepest = 0
    for bracket in _BRACKETS.findall(response):
        depth = depth + 1 if bracket in "{([" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    if deepest > MAX_NESTING:
        return f"brackets nested {deepest} deep (over {MAX_NESTING}): not checked"
    return None


class _Checker:
    """The child process that runs math-verify; replaced after it timed out or died."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._pending = b""  # what the child wrote past the last full reply line
        # Calls share the child one at a time. A call the worker gave up on still ends within
        # START_TIMEOUT_S + CHECK_TIMEOUT_S, so a call waiting for it is bounded as well.
        self._lock = threading.Lock()

    def check(self, response: str, answer: str) -> dict:
        if not self._lock.acquire(timeout=START_TIMEOUT_S + CHECK_TIMEOUT_S):
            raise MathVerifyError("math-verify's checker stayed busy with another call past its own limits")
        try:
            if self._proc is not None and self._proc.poll() is not None:  # died while idle
                self._stop()
            if self._proc is None:
                self._start()
            request = json.dumps({"response": response, "answer": answer}) + "\n"  # ASCII: any locale
            try:
                self._proc.stdin.write(request.encode())
                self._proc.stdin.flush()
            except BrokenPipeError:
                raise MathVerifyError(f"math-verify's checker died before checking ({self._stop()})") from None
            reply = self._reply(CHECK_TIMEOUT_S, "checking this response")
        finally:
            self._lock.release()
        if "error" in reply:
            raise MathVerifyError(f"math-verify raised while checking this response:\n{reply['error']}")
        return reply

    def _start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", "from cispo.reward.math import _serve; _serve()"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._pending = b""
        self._reply(START_TIMEOUT_S, "starting")

    def _reply(self, timeout_s: float, doing: str) -> dict:
        """The child's next reply line; kills the child and raises past the deadline or when it died."""
        deadline = time.monotonic() + timeout_s
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._stop()
                raise MathVerifyError(f"math-verify did not finish {doing} within {timeout_s:g} s; "
                                      "its process was killed (a fresh one serves the next call)")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise MathVerifyError(f"math-verify's process died {doing} ({self._stop()}); "
                                      "its stderr is in this worker's log")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line)

    def _stop(self) -> str:
        """Kill the child (if still running) and say how it ended."""
        proc, self._proc = self._proc, None
        proc.kill()
        code = proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        if code < 0:
            return f"signal {signal.Signals(-code).name}"  # SIGKILL: the OOM killer, or killed here
        return f"exit code {code}"


_CHECKER = _Checker()


def _serve() -> None:
    """The checker process: one JSON request a line on stdin, one JSON reply a line on stdout."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the libraries print goes to stderr, never into a reply
    _set_soft_limit(resource.RLIMIT_AS, CHECKER_MEMORY_BYTES)  # a bomb raises MemoryError, not the OOM killer
    _set_soft_limit(resource.RLIMIT_CORE, 0)  # the CPU cap below kills with SIGXCPU, which would dump core
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns that its timeouts are off: see above
    _send(replies, {"ready": True})
    for line in sys.stdin:  # ends when the caller's process is gone
        request = json.loads(line)
        # The caller kills this process past CHECK_TIMEOUT_S; the CPU cap (a little later, so the
        # caller's clearer error comes first) ends a check whose caller was itself killed meanwhile.
        usage = resource.getrusage(resource.RUSAGE_SELF)
        _set_soft_limit(resource.RLIMIT_CPU, math.ceil(usage.ru_utime + usage.ru_stime + CHECK_TIMEOUT_S) + 5)
        try:
            reply = _check(request["response"], request["answer"])
        except Exception:  # noqa: BLE001 - reported to the caller, which raises it
            reply = {"error": traceback.format_exc()}
        _send(replies, reply)


def _set_soft_limit(kind: int, soft: int) -> None:
    """Set a resource limit of this process, within the hard limit it was given."""
    hard = resource.getrlimit(kind)[1]
    resource.setrlimit(kind, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


def _send(replies, message: dict) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()


def _check(response: str, answer: str) -> dict:
    """Compare with math-verify, its signal timeouts off; its errors raise (a failed check is no 0)."""
    # A bare answer ("1/2", "\\frac{1}{2}", "\\{1,2\\}") is read as LaTeX math, as if between $...$.
    gold_text = answer if "$" in answer or "\\boxed" in answer else f"${answer}$"
    gold = parse(gold_text, parsing_timeout=None, raise_on_error=True)
    target = parse(response, parsing_timeout=None, raise_on_error=True)
    # parse() returns the parsed value(s) then the matched text; the text is what a person reads.
    extracted = next((t for t in reversed(target) if isinstance(t, str)), "")
    passed = bool(gold and target) and verify(gold, target, timeout_seconds=None, raise_on_error=True)
    return {"answer_parsed": bool(gold), "found": bool(target), "pass": bool(passed),
            "extracted": extracted[:EXTRACTED_CHARS]}
