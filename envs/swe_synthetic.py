"""A small synthetic SWE task set, generated at run time (`task=swe_synthetic`).

Each task is a tiny Python package with a bug, its tests, and the fix, committed as
real git history and shipped as a git bundle: commit 1 is `base_commit` (the bug and
the old tests), commit 2 is the future (the fix and the new tests). The gold `patch`
and `test_patch` are the diffs between them, split by path. The future commit stays
in the bundle on purpose: grading must not let a model read it.

`python -m cispo.envs.swe_synthetic DIR` (or `cispo-env synthetic DIR`) writes
DIR/<name>.bundle and DIR/tasks.jsonl.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from textwrap import dedent

from cispo.envs.repo import _GIT, _GIT_ENV
from cispo.envs.swe_instances import DEFAULT_TEST_CMD


@dataclass(frozen=True)
class RepoSpec:
    name: str
    problem_statement: str
    base_files: dict[str, str]  # the buggy package and its old tests
    fix_files: dict[str, str]  # the gold fix: source files only
    new_test_files: dict[str, str]  # tests added or changed with the fix (the test patch)
    fail_to_pass: list[str]
    pass_to_pass: list[str]
    test_cmd: str = DEFAULT_TEST_CMD
    extra: dict[str, object] = field(default_factory=dict)  # more row fields (image, timeout)


def build_task(spec: RepoSpec, out_dir: Path, bundle: bool = True) -> dict:
    """Commit `spec` as base + fix, write the repo (bundle or directory) into `out_dir`; return its task row."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cispo-synth-") as tmp:
        work = Path(tmp) / spec.name if bundle else out_dir / spec.name
        work.mkdir(parents=True)
        _git(work, "init", "-q")
        _write(work, spec.base_files)
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", "the bug")
        base = _git(work, "rev-parse", "HEAD").strip()
        _write(work, spec.fix_files)
        _write(work, spec.new_test_files)
        _git(work, "add", "-A")
        _git(work, "commit", "-q", "-m", "the fix")
        patch = _git(work, "diff", base, "HEAD", "--", *spec.fix_files)
        test_patch = _git(work, "diff", base, "HEAD", "--", *spec.new_test_files)
        if bundle:
            repo_path = f"{spec.name}.bundle"
            _git(work, "bundle", "create", "-q", str(out_dir / repo_path), "--all")
        else:
            repo_path = spec.name
    return {
        "instance_id": f"synthetic__{spec.name}-1",
        "repo": f"synthetic/{spec.name}",
        "base_commit": base,
        "problem_statement": spec.problem_statement,
        "patch": patch,
        "test_patch": test_patch,
        "FAIL_TO_PASS": spec.fail_to_pass,
        "PASS_TO_PASS": spec.pass_to_pass,
        "repo_path": repo_path,
        "test_cmd": spec.test_cmd,
        **spec.extra,
    }


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text).lstrip())


def _git(cwd: Path, *args: str) -> str:
    res = subprocess.run([*_GIT, *args], cwd=cwd, capture_output=True, text=True, env=_GIT_ENV)
    if res.returncode:
        raise RuntimeError(f"git {args[0]} in {cwd} failed: {res.stderr.strip()}")
    return res.stdout


SPECS = (
    RepoSpec(
        name="statkit",
        problem_statement="`statkit.mean([2, 4])` returns 6.0, not 3.0: the mean divides by one too few.",
        base_files={
            "statkit/__init__.py": """
                def total(xs):
                    return sum(xs)


                def mean(xs):
                    return total(xs) / (len(xs) - 1)
                """,
            "tests/test_stats.py": """
                from statkit import total


                def test_total():
                    assert total([1, 2, 3]) == 6
                """,
        },
        fix_files={
            "statkit/__init__.py": """
                def total(xs):
                    return sum(xs)


                def mean(xs):
                    return total(xs) / len(xs)
                """,
        },
        new_test_files={
            "tests/test_stats.py": """
                from statkit import mean, total


                def test_total():
                    assert total([1, 2, 3]) == 6


                def test_mean():
                    assert mean([2, 4]) == 3.0
                """,
        },
        fail_to_pass=["tests/test_stats.py::test_mean"],
        pass_to_pass=["tests/test_stats.py::test_total"],
    ),
    RepoSpec(
        name="slugs",
        problem_statement=(
            "`slugs.slugify` keeps upper case, quotes and runs of spaces: `slugify('Hello World')` "
            "should be 'hello-world' and `slugify('say \"hi\"')` should be 'say-hi'."
        ),
        base_files={
            "src/slugs/__init__.py": """
                def slugify(text):
                    return text.strip().replace(" ", "-")
                """,
            "tests/test_slugify.py": """
                from slugs import slugify


                def test_single_word():
                    assert slugify("word") == "word"
                """,
        },
        fix_files={
            "src/slugs/__init__.py": """
                import re


                def slugify(text):
                    words = re.findall(r"[a-z0-9]+", text.lower())
                    return "-".join(words)
                """,
        },
        new_test_files={
            "tests/test_slugify.py": """
                import pytest

                from slugs import slugify


                def test_single_word():
                    assert slugify("word") == "word"


                @pytest.mark.parametrize("text,expected", [
                    ("Hello World", "hello-world"),
                    ('say "hi"', "say-hi"),
                    ("  a  b ", "a-b"),
                ])
                def test_slugify(text, expected):
                    assert slugify(text) == expected
                """,
        },
        # Parametrised ids with spaces, quotes and brackets: they must reach pytest unmangled.
        fail_to_pass=[
            "tests/test_slugify.py::test_slugify[Hello World-hello-world]",
            'tests/test_slugify.py::test_slugify[say "hi"-say-hi]',
            "tests/test_slugify.py::test_slugify[  a  b -a-b]",
        ],
        pass_to_pass=["tests/test_slugify.py::test_single_word"],
        test_cmd="PYTHONPATH=src python3 -m pytest",
    ),
    RepoSpec(
        name="stacks",
        problem_statement="`Stack().pop()` on an empty stack returns None; it should raise IndexError.",
        base_files={
            "stacks.py": """
                class Stack:
                    def __init__(self):
                        self.items = []

                    def push(self, x):
                        self.items.append(x)

                    def pop(self):
                        if not self.items:
                            return None
                        return self.items.pop()
                """,
            "test_stacks.py": """
                from stacks import Stack


                class TestStack:
                    def test_push_pop(self):
                        s = Stack()
                        s.push(1)
                        assert s.pop() == 1
                """,
        },
        fix_files={
            "stacks.py": """
                class Stack:
                    def __init__(self):
                        self.items = []

                    def push(self, x):
                        self.items.append(x)

                    def pop(self):
                        if not self.items:
                            raise IndexError("pop from an empty stack")
                        return self.items.pop()
                """,
        },
        new_test_files={
            "test_stacks.py": """
                import pytest

                from stacks import Stack


                class TestStack:
                    def test_push_pop(self):
                        s = Stack()
                        s.push(1)
                        assert s.pop() == 1

                    def test_pop_empty(self):
                        with pytest.raises(IndexError):
                            Stack().pop()
                """,
        },
        fail_to_pass=["test_stacks.py::TestStack::test_pop_empty"],
        pass_to_pass=["test_stacks.py::TestStack::test_push_pop"],
    ),
)


def generate(out_dir: str | Path) -> Path:
    """Write every synthetic task's bundle and DIR/tasks.jsonl; returns the JSONL path."""
    out = Path(out_dir)
    rows = [build_task(spec, out) for spec in SPECS]
    path = out / "tasks.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m cispo.envs.swe_synthetic DIR")
    print(generate(sys.argv[1]))
