"""The code-execution environment: the model writes a function, unit tests run it in a sandbox.

`code_reward(prompt, response, metadata)` takes the last ```python block of the
response as `solution.py` and runs `metadata["tests"]` (pytest source that imports
from `solution`) next to it. Score 1.0 only if the tests ran and every one passed;
`fraction` says how many did. The outcomes come from the grading controller's verdict
(`verdict.py`), as for SWE tasks. Statuses: resolved, unresolved, timeout, infra_error
(score NaN, masked by the trainer).

metadata: `tests` (str, required), `timeout` (seconds, default 30), `image` (optional).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

from cispo.envs.docker_daemon import InfraError
from cispo.envs.grading import CONTROLLER_GRACE, PYTEST_ARGS, VERDICT_CAP
from cispo.envs.pool import SandboxPool, shared_pool
from cispo.envs.sandbox import tar_files
from cispo.envs.verdict import PASSED, read_verdict, verdict_run

_FENCE = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)
DIR = "/workspace/code"


def extract_code(response: str) -> str:
    """The last ```python block; "" when there is none."""
    blocks = _FENCE.findall(response)
    return blocks[-1] if blocks else ""


def run_code_tests(code: str, tests: str, pool: SandboxPool, timeout: float = 30.0, image: str | None = None) -> dict[str, Any]:
    """Run `tests` against `code` in a sandbox; the reward dict (see the module doc)."""
    start = time.monotonic()
    if not code.strip():
        return {"score": 0.0, "status": "unresolved", "fraction": 0.0, "tests": {}, "error": "no ```python block in the response"}
    files = tar_files({"code/solution.py": code, "code/test_solution.py": tests})
    vrun = verdict_run(["tar", "-x", "--no-same-owner", "-C", "/workspace"], files,
                       ["python3", "-m", "pytest", *PYTEST_ARGS, "test_solution.py"], DIR, timeout)
    try:
        with pool.sandbox(image) as sb:
            run = sb.exec(vrun.argv, stdin=vrun.stdin, timeout=timeout + CONTROLLER_GRACE, output_cap=VERDICT_CAP,
                          trusted=True, resets_after=vrun.marker)
    except InfraError as e:
        return {"score": math.nan, "status": "infra_error", "error": str(e)}
    verdict = read_verdict(run.output, vrun.secret, None)
    if verdict.prepare_code not in (None, 0):
        return {"score": math.nan, "status": "infra_error", "error": f"unpacking failed: {verdict.prepare_output[-500:]}"}
    outcomes = verdict.tests
    passed = sum(v == PASSED for v in outcomes.values())
    fraction = passed / len(outcomes) if outcomes else 0.0
    if verdict.timed_out or run.timed_out:
        status = "timeout"
    else:
        status = "resolved" if outcomes and passed == len(outcomes) and not verdict.error else "unresolved"
    return {
        "score": 1.0 if status == "resolved" else 0.0,
        "status": status,
        "fraction": fraction,
        "tests": outcomes,
        "seconds": time.monotonic() - start,
        "error": verdict.error,
        "log": verdict.log[-2000:],
    }


def code_reward(prompt: str, response: str, metadata: dict[str, Any]) -> dict[str, Any]:
    tests = metadata.get("tests")
    if not isinstance(tests, str) or not tests.strip():
        return {"score": math.nan, "status": "infra_error", "error": "metadata field 'tests': expected pytest source (a string)"}
    timeout = metadata.get("timeout", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        return {"score": math.nan, "status": "infra_error", "error": f"metadata field 'timeout': expected seconds > 0, got {timeout!r}"}
    return run_code_tests(extract_code(response), tests, shared_pool(), float(timeout), metadata.get("image"))

