"""The graded test run's verdict: per-test outcomes the tested code cannot simply print or forge.

The model's code runs inside the pytest process, so pytest's output is the model's
to write: it can print a fake summary and `os._exit(0)`, or monkeypatch pytest's
reports at import. So grading does not read that output. `grading_controller.py`
prepares the repository, runs the test command as its child, collects one record
per test phase from `verdict_plugin.py` over a pipe, and prints them last, marked
with a secret drawn here for this run alone (sent on stdin, never visible to the child).

`read_verdict` then accepts a pass only when the run holds together: the plugin
started and saw the session finish, pytest's exit status is the one its session
reported and agrees with the reports (0 exactly when nothing failed), and the plugin
found nothing of pytest's replaced. Anything else fails every test and says why.

Limit: code in the same process can, with enough effort aimed at this plugin, still
forge records (it can reach the pipe). What it cannot do is make a verdict appear
without the secret, exit early as a pass, or patch pytest's reporting unnoticed.
"""

from __future__ import annotations

import ast
import json
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from cispo.envs.sandbox import RESET_SCRIPT

PASSED, FAILED = "passed", "failed"
_HERE = Path(__file__).parent
CONTROLLER = (_HERE / "grading_controller.py").read_text()
PLUGIN = (_HERE / "verdict_plugin.py").read_bytes()
_MARKER = "<<cispo-verdict {}>> "
# Episodes are graded in threads, and CPython 3.11's AST constructor keeps its recursion depth in
# state shared by all threads: two literal_evals interleaved (a thread switch inside one) raise a
# spurious "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905).
_AST_LOCK = threading.Lock()


@dataclass(frozen=True)
class VerdictRun:
    """What the sandbox exec needs: the command and its stdin; the secret stays here."""

    argv: list[str]
    stdin: bytes
    secret: str

    @property
    def marker(self) -> bytes:
        """What starts the verdict's line in the controller's output."""
        return _MARKER.format(self.secret).encode()


@dataclass(frozen=True)
class Verdict:
    prepare_code: int | None  # the prepare step's exit status; None: no verdict came back
    prepare_output: str  # its output's tail
    tests: dict[str, str]  # test id -> "passed" / "failed" (all failed unless the run held together)
    timed_out: bool = False  # the tests ran past their timeout
    log: str = ""  # tail of the tests' output
    test_seconds: float = 0.0  # the test process's run, measured in the sandbox
    error: str = ""  # why every test counts as failed; "" when the run held together


def verdict_run(prepare: list[str], bundle: bytes, test: list[str], cwd: str, timeout: float,
                reset: str = RESET_SCRIPT) -> VerdictRun:
    """One exec for one grading: `prepare` unpacks `bundle` (its stdin), then `test` runs in
    `cwd` under `timeout` seconds, wrapped by the controller with a fresh secret; after the
    verdict the controller becomes the shell script `reset` (the sandbox's reset: run it with
    `Sandbox.exec(..., resets_after=run.marker)`)."""
    secret = secrets.token_hex(16)
    job = "".join(f"{field}\0" for field in (cwd, repr(float(timeout)), reset, len(prepare), *prepare, *test)).encode()
    stdin = b"%s\n%010d\n%s%010d\n%s%s" % (secret.encode(), len(job), job, len(PLUGIN), PLUGIN, bundle)
    return VerdictRun(["python3", "-I", "-S", "-c", CONTROLLER], stdin, secret)


def read_verdict(output: str, secret: str, test_ids: list[str] | None) -> Verdict:
    """The controller's verdict in `output`, its per-test outcomes checked for consistency.

    `test_ids`: the tests that count, each matched exactly (ids may hold spaces,
    quotes, brackets, " - "); a missing one failed. None: every test the run reported.
    """
    all_failed = {tid: FAILED for tid in test_ids or ()}
    marker = _MARKER.format(secret)
    at = output.rfind(marker)
    if at < 0:
        return Verdict(None, "", all_failed, error="the test run ended without a verdict (its controller was killed)")
    try:
        with _AST_LOCK:
            verdict = ast.literal_eval(output[at + len(marker) :].split("\n", 1)[0])
        prep = verdict["prepare"]
        prepared = dict(prepare_code=int(prep["exit_code"]), prepare_output=str(prep["output"]))
        if prepared["prepare_code"] != 0:
            return Verdict(**prepared, tests=all_failed)
        code, records = int(verdict["exit_code"]), _records(str(verdict["records"]), int(verdict["dropped"]))
        ran = dict(prepared, timed_out=bool(verdict["timed_out"]), test_seconds=float(verdict["test_seconds"]),
                   log=str(verdict["log"]))
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
        return Verdict(None, "", all_failed, error=f"the verdict could not be read: {e!r}")
    error = _inconsistency(code, records)
    if error:
        return Verdict(**ran, tests=all_failed, error=error)
    by_id: dict[str, list[dict]] = {}
    for r in records:
        if r.get("event") == "report":
            by_id.setdefault(r.get("nodeid"), []).append(r)
    ids = test_ids if test_ids is not None else list(by_id)
    return Verdict(**ran, tests={tid: _outcome(by_id.get(tid, [])) for tid in ids})


def _records(text: str, dropped: int) -> list[dict]:
    """The plugin's JSON lines; a line it cannot have written is "garbled", a cut-off tail "overflow"."""
    parsed = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        parsed.append(record if isinstance(record, dict) else {"event": "garbled", "text": line[:200]})
    if dropped:
        parsed.append({"event": "overflow", "dropped": dropped})
    return parsed


def _inconsistency(code: int, records: list[dict]) -> str:
    """Why the run's records cannot be trusted, or ""."""
    events = [r.get("event") for r in records]
    if {"garbled", "overflow"} & set(events):
        return "the plugin's pipe carried lines the plugin did not write"
    if "start" not in events:
        return f"the test command (exit {code}) never loaded the verdict plugin: a task's test_cmd must run pytest"
    if events[-1] != "finish":
        return f"the test process exited (status {code}) before pytest finished its session"
    finish = records[-1]
    if finish.get("tampered"):
        return "pytest was tampered with: " + "; ".join(map(str, finish["tampered"]))
    if finish.get("exitstatus") != code:
        return f"exit status {code} disagrees with the {finish.get('exitstatus')} pytest's session reported"
    any_failed = any(r.get("outcome") == "failed" for r in records if r.get("event") == "report")
    if code in (0, 1) and (code == 1) != any_failed:
        return f"exit status {code} disagrees with the reports ({'a' if any_failed else 'no'} test failed)"
    return ""


def _outcome(reports: list[dict]) -> str:
    """Passed: the call phase passed (or failed as an expected xfail) and no phase failed."""
    if any(r.get("outcome") == "failed" for r in reports):
        return FAILED
    good = [r for r in reports if r.get("when") == "call" and
            (r.get("outcome"), bool(r.get("xfail"))) in (("passed", False), ("skipped", True))]
    return PASSED if good else FAILED
