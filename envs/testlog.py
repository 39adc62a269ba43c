"""Reading pytest's `-rA` short summary for the test ids a task names.

Ids can hold spaces, quotes and brackets (`test_x[a b-"c"]`), so a summary line is
matched against each expected id exactly (`STATUS <id>` or `STATUS <id> - reason`),
never split on whitespace. Only the last `short test summary info` section counts:
output a test printed earlier cannot pose as a summary line.

A test passes if it has a PASSED or XFAIL line and no FAILED / ERROR line (an error
in teardown after a pass is a failure). Everything else, a missing test included,
is a failure: reward can only come from tests that were seen to pass.
"""

from __future__ import annotations

import re

PASSED, FAILED = "passed", "failed"
_SUMMARY = re.compile(r"^=+ short test summary info =+$", re.MULTILINE)
_GOOD = ("PASSED", "XFAIL")
_BAD = ("FAILED", "ERROR", "XPASS", "SKIPPED")


def read_outcomes(output: str, test_ids: list[str]) -> dict[str, str]:
    """Map each id to "passed" or "failed" from pytest `-rA` output."""
    starts = [m.end() for m in _SUMMARY.finditer(output)]
    summary = output[starts[-1] :] if starts else ""
    seen: dict[str, set[str]] = {}
    wanted = set(test_ids)
    for line in summary.splitlines():
        word, _, rest = line.partition(" ")
        if word not in _GOOD + _BAD:
            continue
        for candidate in (rest, rest.split(" - ", 1)[0]):
            if candidate in wanted:
                seen.setdefault(candidate, set()).add(word)
                break
        else:
            # An id containing " - " itself: match the longest wanted prefix.
            for tid in wanted:
                if rest.startswith(tid + " - "):
                    seen.setdefault(tid, set()).add(word)
    return {tid: PASSED if _passed(seen.get(tid, set())) else FAILED for tid in test_ids}


def _passed(words: set[str]) -> bool:
    return bool(words & set(_GOOD)) and not words & set(_BAD)


def read_summary(output: str) -> dict[str, str]:
    """Every test in the last short summary -> "passed" / "failed", for runs whose ids
    are not known in advance (the code-execution environment). Failure lines carry a
    " - reason" suffix that is dropped, so ids holding " - " are not supported here."""
    starts = [m.end() for m in _SUMMARY.finditer(output)]
    seen: dict[str, set[str]] = {}
    for line in (output[starts[-1] :] if starts else "").splitlines():
        word, _, rest = line.partition(" ")
        if word in _GOOD:
            seen.setdefault(rest, set()).add(word)
        elif word in _BAD and word != "SKIPPED":  # SKIPPED lines name a file:line, not an id
            seen.setdefault(rest.split(" - ", 1)[0], set()).add(word)
    return {tid: PASSED if _passed(words) else FAILED for tid, words in seen.items()}
