"""Fixtures for the sandbox tests: the real daemon, the real base image, real git repos.

Nothing skips: a missing base image is built here by the same code `cispo-env
build-image` runs (about a minute). Every test module ends by checking that no
container labelled by this process is left.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from docker_helpers import our_containers
from cispo.envs.image import DEFAULT_IMAGE, build_base_image
from cispo.envs.pool import SandboxPool
from cispo.envs.sandbox import SandboxConfig
from cispo.envs.swe_synthetic import SPECS, RepoSpec, build_task, generate
from cispo.envs.swe_instances import load_instances, instance_from_row


@pytest.fixture(scope="session", autouse=True)
def base_image():
    build_base_image(DEFAULT_IMAGE, if_missing=True)
    return DEFAULT_IMAGE


@pytest.fixture(scope="module", autouse=True)
def no_leftover_containers():
    yield
    left = our_containers()
    for c in left:
        c.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"


@pytest.fixture(scope="module")
def pool():
    # Small limits keep the hostile tests quick; 2 at once matches CI's 2 cores.
    config = SandboxConfig(memory="512m", pids=128, tmp_size="128m", workspace_size="256m", timeout=30)
    with SandboxPool(config, max_concurrency=2) as p:
        yield p


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """The shipped synthetic task set, generated into a temporary directory."""
    path = generate(tmp_path_factory.mktemp("synthetic"))
    return {t.instance_id: t for t in load_instances(path)}


@pytest.fixture(scope="session")
def statkit_spec() -> RepoSpec:
    return next(s for s in SPECS if s.name == "statkit")


@pytest.fixture(scope="session")
def make_task(tmp_path_factory):
    """Build a task from a RepoSpec in a fresh directory: `make_task(spec, bundle=True, **row_overrides)`."""

    def make(spec: RepoSpec, bundle: bool = True, **overrides):
        out: Path = tmp_path_factory.mktemp(spec.name)
        row = {**build_task(spec, out, bundle=bundle), **overrides}
        return instance_from_row(row, f"{spec.name} (test)", base_dir=out)

    return make
