"""The repository at its base commit, with no way back to its future.

SWE-bench checks out `base_commit` in a full clone: `git log --all` (or any object
the fix left in the pack) shows the answer. Here the tree at `base_commit` is
exported with `git archive` on the host and committed into a brand-new repository:
one commit, no refs, no objects from any other commit. The result is a tar
(`repo/...`, fresh `.git` included) that the sandbox unpacks; it is cached per
source and commit because an RL job grades the same task many times.

Sources (all offline): a git working tree or bare directory, a git bundle, or a
tarball holding either.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

_GIT = ["git", "-c", "safe.directory=*", "-c", "init.defaultBranch=main", "-c", "core.hooksPath=/dev/null"]
# A fixed identity and date: the same base tree always gives the same commit id.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "cispo",
    "GIT_AUTHOR_EMAIL": "cispo@localhost",
    "GIT_COMMITTER_NAME": "cispo",
    "GIT_COMMITTER_EMAIL": "cispo@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
}
CACHE_SIZE = 16


class RepoError(RuntimeError):
    """The task's repository source cannot give its base commit (a task problem, not the model's)."""


_cache: OrderedDict[tuple, bytes] = OrderedDict()
_cache_lock = threading.Lock()


def snapshot(source: Path, commit: str) -> bytes:
    """A tar of `repo/` holding the tree at `commit` as the single commit of a fresh repository."""
    source = Path(source).resolve()
    try:
        stamp = source.stat().st_mtime_ns
    except OSError as e:
        raise RepoError(f"repository source {source}: {e}") from e
    key = (str(source), stamp, commit)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    data = _build(source, commit)
    with _cache_lock:
        _cache[key] = data
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return data


def _build(source: Path, commit: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="cispo-repo-") as tmp:
        tmp_path = Path(tmp)
        gitdir = _git_source(source, tmp_path)
        if _git(["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], cwd=gitdir, check=False).returncode:
            raise RepoError(f"repository source {source}: base_commit {commit} not found")
        tree = _git(["archive", "--format=tar", commit], cwd=gitdir).stdout
        repo = tmp_path / "repo"
        repo.mkdir()
        with tarfile.open(fileobj=io.BytesIO(tree)) as tf:
            tf.extractall(repo, filter="tar")
        _git(["init", "-q"], cwd=repo)
        _git(["add", "-A", "-f"], cwd=repo)
        _git(["commit", "-q", "--allow-empty", "-m", f"base {commit}"], cwd=repo)
        for hook in (repo / ".git/hooks").glob("*"):
            hook.unlink()
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tf:
            tf.add(repo, arcname="repo")
        return out.getvalue()


def _git_source(source: Path, tmp: Path) -> Path:
    """A directory git can read the commit from: the source itself, or a clone/unpack of it."""
    if source.is_dir():
        return source
    if tarfile.is_tarfile(source):
        unpacked = tmp / "src"
        unpacked.mkdir()
        with tarfile.open(source) as tf:
            tf.extractall(unpacked, filter="data")
        for candidate in [unpacked, *sorted(p for p in unpacked.iterdir() if p.is_dir())]:
            if (candidate / ".git").exists() or (candidate / "HEAD").is_file():
                return candidate
        raise RepoError(f"repository source {source}: the tarball holds no git repository at its top level")
    clone = tmp / "src.git"
    res = _git(["clone", "-q", "--bare", str(source), str(clone)], cwd=tmp, check=False)
    if res.returncode:
        raise RepoError(f"repository source {source}: not a git directory, bundle or tarball ({res.stderr.strip()})")
    return clone


def _git(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([*_GIT, *args], cwd=cwd, capture_output=True, env=_GIT_ENV)
    if check and res.returncode:
        raise RepoError(f"git {args[0]} in {cwd} failed: {res.stderr.decode(errors='replace').strip()}")
    res.stderr = res.stderr.decode(errors="replace")
    return res


def read_file(source: Path, commit: str, path: str) -> str:
    """The text of `path` at `commit` in a repository source (a directory, bundle or tarball)."""
    with tempfile.TemporaryDirectory(prefix="cispo-repo-") as tmp:
        gitdir = _git_source(Path(source).resolve(), Path(tmp))
        return _git(["show", f"{commit}:{path}"], cwd=gitdir).stdout.decode()
