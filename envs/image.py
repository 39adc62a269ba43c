"""The base sandbox image, built locally: no registry is reachable on our machines.

`debootstrap --variant=minbase` makes a Debian root with just python3, git, patch and
pytest; `docker import` turns it into an image. The non-root user is written straight
into the root's /etc/passwd before the import, so the image needs no follow-up commit.
The Debian mirror comes from the machine's own apt sources: the repo never names a host.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from cispo.envs.docker_daemon import connect

DEFAULT_IMAGE = "cispo-sandbox:bookworm"
SUITE = "bookworm"
PACKAGES = ("python3", "git", "patch", "python3-pytest")
# The sandbox user: a high uid so it never matches a real account on the host.
SANDBOX_UID = 10001
SANDBOX_USER = "sandbox"
APT_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


@dataclass(frozen=True)
class BuildReport:
    name: str
    built: bool  # False when --if-missing found the image already there
    image_id: str


def debian_mirror(sources: tuple[Path, ...] = APT_SOURCES) -> str:
    """The first Debian mirror for the main suite in the machine's apt sources.

    Reads both the deb822 format (`URIs:` / `Suites:` stanzas) and the one-line
    format (`deb URL SUITE main`); security and update suites are skipped because
    debootstrap needs the plain distribution.
    """
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = _deb822_fields(stanza)
                if SUITE in fields.get("Suites", "").split() and fields.get("URIs"):
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                parts = _strip_options(line.split("#", 1)[0].split())
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                    return parts[1]
    names = ", ".join(str(p) for p in sources)
    raise RuntimeError(f"no apt source for Debian {SUITE} found in {names}: cannot pick a mirror for debootstrap")


def _deb822_fields(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in stanza.splitlines():
        if line.startswith("#") or ":" not in line or line[:1].isspace():
            continue
        key, value = line.split(":", 1)
        fields[key.strip()] = value.strip()
    return fields


def _strip_options(parts: list[str]) -> list[str]:
    """`deb [arch=amd64 signed-by=...] URL suite` -> `deb URL suite`."""
    if len(parts) > 1 and parts[1].startswith("["):
        end = next(i for i, p in enumerate(parts) if p.endswith("]"))
        return [parts[0], *parts[end + 1 :]]
    return parts


def image_exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_base_image(name: str = DEFAULT_IMAGE, if_missing: bool = False, log=print) -> BuildReport:
    """Build (or with `if_missing`, only check for) the base sandbox image."""
    client = connect()
    if if_missing and image_exists(client, name):
        return BuildReport(name, built=False, image_id=client.images.get(name).id)
    for tool in ("debootstrap", "tar"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"building {name} needs `{tool}` on the host (Debian: apt-get install {tool})")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="cispo-rootfs-") as tmp:
        root = Path(tmp) / "root"
        log(f"cispo-env: debootstrap {SUITE} from {mirror} (about a minute)")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror])
        _add_user(root)
        _slim(root)
        log(f"cispo-env: importing {name}")
        image_id = _import(root, name)
    return BuildReport(name, built=True, image_id=image_id)


def _add_user(root: Path) -> None:
    with open(root / "etc/passwd", "a") as f:
        f.write(f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}::/home/{SANDBOX_USER}:/bin/sh\n")
    with open(root / "etc/group", "a") as f:
        f.write(f"{SANDBOX_USER}:x:{SANDBOX_UID}:\n")
    with open(root / "etc/shadow", "a") as f:
        f.write(f"{SANDBOX_USER}:!:19000:0:99999:7:::\n")
    for d in (f"home/{SANDBOX_USER}", "workspace"):
        (root / d).mkdir(parents=True, exist_ok=True)
        shutil.chown(root / d, SANDBOX_UID, SANDBOX_UID)


def _slim(root: Path) -> None:
    """Drop apt caches and docs: about a third of the root, none of it used in a sandbox."""
    for d in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
        shutil.rmtree(root / d, ignore_errors=True)


def _import(root: Path, name: str) -> str:
    changes = [
        f"USER {SANDBOX_USER}",
        "WORKDIR /workspace",
        "ENV PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8",
        'CMD ["sleep", "infinity"]',
        "LABEL cispo.image=base",
    ]
    args = ["docker", "import"]
    for change in changes:
        args += ["--change", change]
    args += ["-", name]
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    try:
        out = subprocess.run(args, stdin=tar.stdout, capture_output=True, text=True)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
    if out.returncode != 0 or tar.returncode != 0:
        raise RuntimeError(f"docker import of {name} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def _run(args: list[str]) -> None:
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        tail = "\n".join((out.stdout + out.stderr).splitlines()[-20:])
        raise RuntimeError(f"{args[0]} failed (exit {out.returncode}):\n{tail}")


