"""Load a user's reward function from `package.module:fn` or `/path/to/file.py:fn`."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable


class RewardLoadError(ValueError):
    pass


def load_reward_fn(spec: str) -> Callable:
    """Resolve `spec` to a callable; the error says which part of the spec is wrong."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise RewardLoadError(f"reward.fn={spec!r}: expected 'package.module:fn' or '/path/to/file.py:fn'")
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise RewardLoadError(f"reward.fn={spec!r}: no file {path}")
        module_name = f"cispo_user_reward_{abs(hash(str(path)))}"
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as e:
            raise RewardLoadError(f"reward.fn={spec!r}: importing {path} failed: {e!r}") from e
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise RewardLoadError(f"reward.fn={spec!r}: cannot import module {target!r}: {e!r}") from e
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise RewardLoadError(f"reward.fn={spec!r}: {target} has no {name!r}; callables there: {public}")
    if not callable(fn):
        raise RewardLoadError(f"reward.fn={spec!r}: {name!r} is a {type(fn).__name__}, not a function")
    return fn


def is_async(fn: Callable) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
