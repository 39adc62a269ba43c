"""`cispo-env`: build the sandbox image, score predictions, make the synthetic task set."""

from __future__ import annotations

import argparse
import sys

from cispo.envs.engine import InfraError
from cispo.envs.image import DEFAULT_IMAGE, build_base_image


def _build_image(args: argparse.Namespace) -> int:
    report = build_base_image(args.name, if_missing=args.if_missing)
    verb = "built" if report.built else "already present:"
    print(f"cispo-env: {verb} {report.name} ({report.image_id[:19]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cispo-env", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build-image", help="build the base sandbox image with debootstrap + docker import")
    p.add_argument("--name", default=DEFAULT_IMAGE, help=f"image name (default {DEFAULT_IMAGE})")
    p.add_argument("--if-missing", action="store_true", help="do nothing when the image already exists")
    p.set_defaults(func=_build_image)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (InfraError, RuntimeError, OSError) as e:
        print(f"cispo-env {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
