"""Load a user's plug-in (a reward function, a task) from `package.module:name` or `/path/to/file.py:name`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable


class RewardLoadError(ValueError):
    pass


def load_object(spec: str, key: str, error: type[ValueError] = ValueError) -> Any:
    """Resolve `spec` to a callable; `key` (the config key it came from) and the part of the spec
    that is wrong are named in the error."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise error(f"{key}={spec!r}: expected 'package.module:name' or '/path/to/file.py:name'")
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise error(f"{key}={spec!r}: no file {path}")
        module_name = f"cispo_user_{abs(hash(str(path)))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise error(f"{key}={spec!r}: importing {path} failed: {e!r}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise error(f"{key}={spec!r}: cannot import module {target!r}: {e!r}") from e
    obj = getattr(module, name, None)
    if obj is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise error(f"{key}={spec!r}: {target} has no {name!r}; callables there: {public}")
    if not callable(obj):
        raise error(f"{key}={spec!r}: {name!r} is a {type(obj).__name__}, not callable")
    return obj


def load_reward_fn(spec: str) -> Callable:
    """The reward function `reward.fn` names."""
    return load_object(spec, key="reward.fn", error=RewardLoadError)


def is_async(fn: Callable) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
