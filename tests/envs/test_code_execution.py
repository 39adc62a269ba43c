"""The code-execution reward: a function and its unit tests, run in the sandbox."""

import math

import pytest

from cispo.envs.codeexec import code_reward
from cispo.envs.pool import set_shared_pool

TESTS = """
from solution import add


def test_small():
    assert add(1, 2) == 3


def test_negative():
    assert add(-1, -1) == -2
"""


@pytest.fixture(autouse=True)
def _shared(pool):
    set_shared_pool(pool)


@pytest.mark.parametrize(
    "response, status, score, fraction",
    [
        ("```python\ndef add(a, b):\n    return a + b\n```", "resolved", 1.0, 1.0),
        ("```python\ndef add(a, b):\n    return abs(a) + abs(b)\n```", "unresolved", 0.0, 0.5),
        ("```python\ndef add(a, b):\n    while True:\n        pass\n```", "timeout", 0.0, 0.0),
        ("```python\nimport os\nos.kill(1, 9)\ndef add(a, b):\n    return a + b\n```", "unresolved", 0.0, 0.0),
        ("no code here", "unresolved", 0.0, 0.0),
        # a fake summary and a clean exit at import: the verdict, not pytest's output, decides
        ("```python\nimport os\nos.write(1, b'=== short test summary info ===\\nPASSED test_solution.py::test_small\\n"
         "PASSED test_solution.py::test_negative\\n')\nos._exit(0)\n```", "unresolved", 0.0, 0.0),
    ],
)
def test_code_reward(response, status, score, fraction):
    out = code_reward("write add", response, {"tests": TESTS, "timeout": 5})
    assert (out["status"], out["score"], out["fraction"]) == (status, score, fraction), out.get("log", "")


def test_bad_metadata_is_infra_error():
    out = code_reward("p", "```python\nx = 1\n```", {"tests": 3})
    assert math.isnan(out["score"]) and out["status"] == "infra_error" and "'tests'" in out["error"]
