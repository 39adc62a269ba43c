"""Reading patches and pytest summaries before anything runs: pure functions, no daemon."""

import pytest

from cispo.envs.codeexec import extract_code
from cispo.envs.patching import PatchFiles, UnsafePatch, is_protected, patch_files, paths_to_restore
from cispo.envs.swe import extract_patch
from cispo.envs.testlog import read_outcomes, read_summary

GOOD = """diff --git a/pkg/mod.py b/pkg/mod.py
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -1 +1 @@
-x = 1
+x = 2
diff --git a/old.py b/new.py
similarity index 100%
rename from old.py
rename to new.py
diff --git "a/sp\\303\\251cial name.py" "b/sp\\303\\251cial name.py"
new file mode 100644
--- /dev/null
+++ "b/sp\\303\\251cial name.py"
@@ -0,0 +1 @@
+y = 1
"""


def test_patch_files_lists_every_path():
    assert patch_files(GOOD).paths == ("pkg/mod.py", "old.py", "new.py", "spécial name.py")
    assert patch_files("").paths == ()


@pytest.mark.parametrize(
    "patch, why",
    [
        ("--- a/../../etc/passwd\n+++ b/../../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "climbs out"),
        ("--- /etc/passwd\n+++ /etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "absolute path"),
        ("--- a/x\n+++ b/x\n", None),
        ("diff --git a/x b/x\nrename from x\nrename to ../x\n", "climbs out"),
        ("--- a/.git/hooks/pre-commit\n+++ b/.git/hooks/pre-commit\n", "writes into .git"),
        ("diff --git a/l b/l\nnew file mode 120000\n--- /dev/null\n+++ b/l\n@@ -0,0 +1 @@\n+/etc\n", "symlink"),
        ("just some words, no diff\n", "names no file"),
    ],
)
def test_unsafe_patches_are_refused(patch, why):
    if why is None:
        assert patch_files(patch).paths == ("x",)
        return
    with pytest.raises(UnsafePatch, match=why):
        patch_files(patch)


@pytest.mark.parametrize(
    "path, protected",
    [
        ("tests/test_a.py", True),
        ("pkg/tests/helpers.py", True),
        ("test_a.py", True),
        ("pkg/a_test.py", True),
        ("conftest.py", True),
        ("src/pkg/conftest.py", True),
        ("pytest.ini", True),
        ("src/sitecustomize.py", True),
        ("evil.pth", True),
        ("pkg.egg-info/entry_points.txt", True),
        ("pytest.py", True),
        ("_pytest/x.py", True),
        ("pkg/mod.py", False),
        ("pkg/testament.py", False),
        ("setup.py", False),
    ],
)
def test_protected_paths(path, protected):
    assert is_protected(path) is protected


def test_paths_to_restore_adds_the_test_patch_files():
    model = PatchFiles(("pkg/mod.py", "conftest.py", "tests/test_a.py"))
    assert paths_to_restore(model, PatchFiles(("tests/test_b.py",))) == ["conftest.py", "tests/test_a.py", "tests/test_b.py"]


SUMMARY = """
PASSED tests/t.py::test_a  (printed by a test, before the summary: ignored)
=========================== short test summary info ============================
PASSED tests/t.py::test_p[Hello World-x]
PASSED tests/t.py::test_p[say "hi"-y]
FAILED tests/t.py::test_f - AssertionError: assert 1 == 2
PASSED tests/t.py::test_teardown
ERROR tests/t.py::test_teardown - RuntimeError
XFAIL tests/t.py::test_x - reason
FAILED tests/t.py::test_d[a - b] - assert False
SKIPPED [1] tests/t.py:9: no
========================= 1 failed, 3 passed in 0.10s ==========================
"""


def test_outcomes_match_ids_exactly():
    ids = [
        "tests/t.py::test_p[Hello World-x]",
        'tests/t.py::test_p[say "hi"-y]',
        "tests/t.py::test_f",
        "tests/t.py::test_teardown",
        "tests/t.py::test_x",
        "tests/t.py::test_d[a - b]",
        "tests/t.py::test_a",
        "tests/t.py::test_missing",
    ]
    got = read_outcomes(SUMMARY, ids)
    assert got == {
        ids[0]: "passed",
        ids[1]: "passed",
        ids[2]: "failed",
        ids[3]: "failed",  # an error in teardown after a pass
        ids[4]: "passed",  # xfail counts as a pass, as in SWE-bench
        ids[5]: "failed",
        ids[6]: "failed",  # only named before the summary
        ids[7]: "failed",  # missing
    }
    assert read_outcomes("no summary at all", ids[:1]) == {ids[0]: "failed"}
    assert read_summary(SUMMARY)["tests/t.py::test_f"] == "failed"


def test_fenced_blocks_last_one_wins():
    text = "first\n```diff\n--- a/x\n```\nthen\n```diff\n--- a/y\n+++ b/y\n```\n"
    assert extract_patch(text) == "--- a/y\n+++ b/y\n"
    assert extract_patch("no block") == ""
    assert extract_code("```python\ndef f():\n    return 1\n```") == "def f():\n    return 1\n"
