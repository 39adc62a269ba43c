"""`cispo-train --help`: the composed config as YAML, each key under the comment that documents it.

The comments are read from `cispo/config.py`'s source, so the field definitions stay
the one place a key is described.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from importlib import resources
from typing import Any

import yaml

from cispo import config as config_module


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the comment lines right above the field, in a module's source."""
    lines = source.splitlines()
    comments: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for stmt in node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                above, row = [], stmt.lineno - 2
                while row >= 0 and lines[row].strip().startswith("#"):
                    above.insert(0, lines[row].strip())
                    row -= 1
                if above:
                    comments[(node.name, stmt.target.id)] = "\n".join(above)
    return comments


def config_groups() -> dict[str, list[str]]:
    """Hydra's config groups (conf/ folders) and the options each offers."""
    root = resources.files("cispo.conf")
    return {group.name: sorted(f.name.removesuffix(".yaml") for f in group.iterdir() if f.name.endswith(".yaml"))
            for group in sorted(root.iterdir(), key=lambda p: p.name)
            if group.is_dir() and not group.name.startswith("_")}


def annotated_config(values: dict[str, Any]) -> str:
    """The config's sections as YAML, every documented key preceded by its comment from cispo/config.py."""
    comments = field_comments(inspect.getsource(config_module))
    out = []
    for section in dataclasses.fields(config_module.Config):
        out.append(f"{section.name}:")
        for key, value in values[section.name].items():
            note = comments.get((section.type.__name__ if isinstance(section.type, type) else section.type, key))
            if note:
                out.extend(f"  {line}" for line in note.splitlines())
            out.append(f"  {key}: {_yaml_value(value)}")
    return "\n".join(out)


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def help_text(overrides: list[str]) -> str:
    """The whole help: usage, config groups, then the composed config (after `overrides`) with its comments."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("cispo.conf", version_base="1.3"):
        values = OmegaConf.to_container(compose("config", overrides=overrides), resolve=False)
    groups = "\n".join(f"  {name}: {', '.join(options)}" for name, options in config_groups().items())
    return (f"usage: cispo-train [group=option ...] [section.key=value ...]\n"
            f"       cispo-train --help [overrides]   this text, for the config those overrides compose\n"
            f"       cispo-train --cfg job [overrides] the resolved config, without comments\n\n"
            f"Config groups (group=option):\n{groups}\n\n"
            f"Config (every key can be set as section.key=value):\n{annotated_config(values)}\n")
