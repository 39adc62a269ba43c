"""Reading a model's patch before anything applies it, and applying it in the sandbox.

SWE-bench applies whatever the model wrote and runs the tests. Three holes follow,
closed here:
- a path outside the repository (`../../x`, `/etc/x`, `.git/hooks/x`, a symlink to
  write through) is refused before the patch reaches a container;
- a model can edit the tests, or add a `conftest.py` / plugin that forces passes:
  every test-looking or pytest-steering path the patch touches is put back to the
  base version (or removed if new) before `test_patch` goes in;
- `patch`'s fallback is forced to unified diffs (`-u`), never ed scripts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

_HEADER_PATHS = re.compile(r"^(?:--- |\+\+\+ )(.*)$")
_GIT_HEADER = re.compile(r"^diff --git (.*)$")
_QUOTED_PAIR = re.compile(r'^("(?:[^"\\]|\\.)*") ("(?:[^"\\]|\\.)*")$')
_BINARY_WITHOUT_DATA = re.compile(r"^Binary files .* differ$")
_GIT_PATHS = re.compile(r"^(?:rename|copy) (?:from|to) (.*)$")
_SYMLINK_MODE = re.compile(r"^(?:new file mode|new mode|old mode|deleted file mode) 120000")

TEST_DIRS = frozenset({"test", "tests", "testing"})
# Names that steer pytest or the interpreter when they appear anywhere on the path.
STEERING_NAMES = frozenset({"conftest.py", "pytest.ini", "tox.ini", "sitecustomize.py", "usercustomize.py"})
# Top-level names that would shadow pytest itself when tests run from the repo root.
SHADOWING_ROOTS = frozenset({"pytest.py", "pytest", "_pytest", "py.py", "pluggy", "pluggy.py"})


class UnsafePatch(ValueError):
    """The patch reaches outside the repository or is not a diff we can read."""


@dataclass(frozen=True)
class PatchFiles:
    paths: tuple[str, ...]  # every repository path the patch touches, old and new names


def patch_files(patch: str) -> PatchFiles:
    """The repository paths a unified / git diff touches, refusing unsafe ones.

    Paths come from `---`/`+++`, rename/copy lines and `diff --git a/x b/x` (which alone
    names the file of a `GIT binary patch`, applied by `git apply`). Raises `UnsafePatch`
    for absolute paths, `..`, `.git/`, symlinks, a binary change without its data
    (`Binary files ... differ`: nothing can apply it), or a non-empty patch that names
    no file at all (not a diff).
    """
    paths: list[str] = []
    file = ""  # the path of the current `diff --git` block, when its header names one
    for n, line in enumerate(patch.splitlines(), 1):
        if m := _GIT_HEADER.match(line):
            file = _git_header_path(m.group(1), n)
            if file:
                paths.append(file)  # a binary or mode-only change has no ---/+++ lines to name it
            continue
        if _BINARY_WITHOUT_DATA.match(line):
            raise UnsafePatch(f"line {n}: {file or 'a file'}: binary patches without their data are not supported "
                              f"({line!r}): write binary changes with `git diff --binary`")
        if _SYMLINK_MODE.match(line):
            raise UnsafePatch(f"line {n}: the patch creates or changes a symlink, which could write outside the repository")
        m = _HEADER_PATHS.match(line) or _GIT_PATHS.match(line)
        if not m:
            continue
        raw = _unquote(m.group(1).split("\t", 1)[0].strip() if not m.group(1).startswith('"') else m.group(1))
        if raw == "/dev/null":
            continue
        if line.startswith(("--- ", "+++ ")):
            _check(raw, n)  # before -p1: "/etc/x" must not become "etc/x"
            raw = _strip_prefix(raw)
        paths.append(_check(raw, n))
    if patch.strip() and not paths:
        raise UnsafePatch("the patch names no file: expected a unified diff (--- a/x, +++ b/x)")
    return PatchFiles(tuple(dict.fromkeys(paths)))


def _git_header_path(names: str, line: int) -> str:
    """The path `diff --git a/x b/x` names: both names the same after -p1, so (unquoted) the
    line splits at its middle space. Empty for a rename (its rename lines name it)."""
    if m := _QUOTED_PAIR.match(names):
        old, new = _unquote(m.group(1)), _unquote(m.group(2))
    else:
        middle = len(names) // 2
        old, new = names[:middle], names[middle + 1 :]
        if names[middle : middle + 1] != " ":
            return ""
    if _strip_prefix(old) != _strip_prefix(new):
        return ""
    _check(old, line)  # before -p1, as for ---/+++
    return _check(_strip_prefix(old), line)


def _strip_prefix(path: str) -> str:
    """`a/x` / `b/x` -> `x` (the -p1 that git apply and patch use)."""
    parts = path.split("/", 1)
    return parts[1] if len(parts) == 2 else path


def _unquote(s: str) -> str:
    """git's C-style quoting of unusual names: "a/sp\\303\\251cial\\tname"."""
    if not (s.startswith('"') and s.endswith('"') and len(s) >= 2):
        return s
    body = s[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape").encode("latin-1")
    return body.decode("utf-8", "replace")


def _check(path: str, line: int) -> str:
    p = PurePosixPath(path)
    if p.is_absolute() or path.startswith("~"):
        raise UnsafePatch(f"line {line}: absolute path {path!r} is outside the repository")
    if ".." in p.parts:
        raise UnsafePatch(f"line {line}: path {path!r} climbs out of the repository")
    if p.parts and p.parts[0] == ".git":
        raise UnsafePatch(f"line {line}: path {path!r} writes into .git")
    if not p.parts or path in (".", ""):
        raise UnsafePatch(f"line {line}: empty path")
    return str(p)


def is_protected(path: str) -> bool:
    """True for paths a model's patch may not change: tests and what steers pytest.

    Tests: a `test`/`tests`/`testing` directory anywhere, `test_*.py`, `*_test.py`.
    Steering: conftest.py, pytest.ini, tox.ini, site/usercustomize.py, `.pth` files,
    package metadata (`*.egg-info`, `*.dist-info`: entry points load pytest plugins),
    and top-level names that shadow pytest.
    """
    p = PurePosixPath(path)
    name = p.name
    if any(part in TEST_DIRS for part in p.parts[:-1]):
        return True
    if (name.startswith("test_") or name.endswith("_test.py")) and name.endswith(".py"):
        return True
    if name in STEERING_NAMES or name.endswith(".pth"):
        return True
    if any(part.endswith((".egg-info", ".dist-info")) for part in p.parts):
        return True
    return p.parts[0] in SHADOWING_ROOTS


def paths_to_restore(model: PatchFiles, test_patch: PatchFiles) -> list[str]:
    """Paths to put back to base before the test patch: the protected ones the model touched,
    plus every file the test patch touches (so it applies to the base version)."""
    chosen = [p for p in model.paths if is_protected(p)] + list(test_patch.paths)
    return list(dict.fromkeys(chosen))


# Runs in the sandbox as `sh -c PREPARE prepare PATHS...`, stdin a tar holding repo/ and
# .cispo/{model,test}.patch. Applies the model's patch with fallbacks (tree reset between
# attempts), restores PATHS to base (removing those base lacks), applies the test patch.
# Tool output goes to a log of which only the tail is printed: a patch of a million
# hunks must not flood the exec.
# Exit 10: the model's patch did not apply; 11: the test patch did not (the task is broken).
PREPARE = r"""
set -u
tar -x -i --no-same-owner -C /workspace || exit 12
cd /workspace/repo || exit 12
P=/workspace/.cispo
log="$P/apply.log"
quiet() { "$@" >>"$log" 2>&1; }
clean() { git reset -q --hard HEAD && git clean -qfdx; }
method=none
if [ -s "$P/model.patch" ]; then
  if quiet git apply --whitespace=nowarn "$P/model.patch"; then method=git_apply
  elif clean && quiet git apply --whitespace=nowarn --reject "$P/model.patch"; then method=git_apply_reject
  elif clean && quiet patch --batch -u --fuzz=5 -p1 --no-backup-if-mismatch -i "$P/model.patch"; then method=patch_fuzz
  else clean; tail -c 4000 "$log"; echo "<<cispo-prepare>> patch_failed"; exit 10
  fi
fi
for p in "$@"; do
  if git cat-file -e "HEAD:$p" 2>/dev/null; then git checkout -q HEAD -- "$p"; else rm -rf -- "$p"; fi
done
if [ -s "$P/test.patch" ] && ! quiet git apply --whitespace=nowarn "$P/test.patch"; then
  tail -c 4000 "$log"; echo "<<cispo-prepare>> test_patch_failed"; exit 11
fi
echo "<<cispo-prepare>> applied $method"
"""
