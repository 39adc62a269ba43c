"""One-edit SWE tasks a tiny policy can learn (`task=swe_edit`, played with env.mode=agent).

Each task is a generated one-function Python repository whose issue names the file,
the faulty expression and what it should be ("In lomavi.py, `x * 3 - y` should be
`x * 3 + y`."); a new test fails on the bug and passes on the fix. It is solved by one
`str_replace_editor` call that copies the path and the two expressions from the issue,
then `submit`; each row carries that edit as `reference_edit`, so the supervised
warm-up trains on exactly that episode (`cispo.envs.swe_agent.edit_trajectory`).

The set is a pure function of (seed, sizes, this file): module names and expressions
are drawn from a seeded generator, and no held-out task shares its file name or its
faulty expression with a training task. It is written once per version into
`<data_dir>/<hash>/` (train.jsonl, held_out.jsonl and one git repository per task: the
fix's commit is in it, but a sandbox only ever gets the base tree) and reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cispo.envs.swe_synthetic import RepoSpec, build_task
from cispo.envs.swe_task import SWETask, publish_generated
from cispo.envs.task import register_task

_SYLLABLES = ("ba", "ko", "mi", "lu", "ter", "va", "no", "si", "dep", "ra", "fi", "gol", "ze", "pu", "han", "wi")
_VARIABLES = ("a", "b", "x", "y", "n", "m", "p", "q", "u", "v")
_OPS = ("+", "-", "*")


def _expression(rng: random.Random, a: str, b: str) -> tuple[str, str]:
    """(correct, faulty): `a op1 k op2 b`-shaped, the fault one operator or constant changed."""
    k = rng.randint(2, 9)
    op1, op2 = rng.choice(_OPS), rng.choice(_OPS)
    correct = f"{a} {op1} {k} {op2} {b}" if rng.random() < 0.5 else f"{a} {op1} {b} {op2} {k}"
    parts = correct.split(" ")
    where = rng.choice([i for i, part in enumerate(parts) if part in _OPS or part.isdigit()])
    if parts[where] in _OPS:
        parts[where] = rng.choice([op for op in _OPS if op != parts[where]])
    else:
        parts[where] = str(rng.choice([d for d in range(2, 10) if d != k]))
    return correct, " ".join(parts)


def _spec(rng: random.Random, module: str) -> tuple[RepoSpec, dict] | None:
    """One task named `module`, with its reference edit; None when the drawn fault changes no test value."""
    a, b = rng.sample(_VARIABLES, 2)
    function = rng.choice(("calc", "score", "mix", "step", "value", "combine"))
    correct, faulty = _expression(rng, a, b)
    cases = [(i, j) for i, j in ((2, 3), (5, 7), (4, 1))
             if eval(correct, {a: i, b: j}) != eval(faulty, {a: i, b: j})]  # noqa: S307 - our own arithmetic
    if not cases:
        return None
    i, j = cases[0]
    expected = eval(correct, {a: i, b: j})  # noqa: S307
    source = f"def {function}({a}, {b}):\n    return {{}}\n"
    path = f"{module}.py"
    spec = RepoSpec(
        name=module,
        problem_statement=f"In {path}, `{faulty}` should be `{correct}`.",
        base_files={path: source.format(faulty)},
        fix_files={path: source.format(correct)},
        new_test_files={f"test_{module}.py": f"from {module} import {function}\n\n\ndef test_{function}():\n"
                                              f"    assert {function}({i}, {j}) == {expected}\n"},
        fail_to_pass=[f"test_{module}.py::test_{function}"],
        pass_to_pass=[],
    )
    return spec, {"path": path, "old_str": faulty, "new_str": correct}


def specs(seed: int, train: int, held_out: int) -> tuple[list, list]:
    """(training, held-out) lists of (RepoSpec, reference edit); file names and faulty expressions
    are unique across both, so a held-out task is never a training task in disguise. The held-out
    tasks are a random share of the draw, not its start: the 256 two-syllable names run out early
    in a draw, and its first tasks hold far more of them than the rest."""
    if train < 1 or held_out < 0:
        raise ValueError(f"task.train_size must be >= 1 and task.eval_size >= 0, got {train} and {held_out}")
    names = sum(len(_SYLLABLES) ** n for n in (2, 3))  # module names of 2 or 3 syllables
    if train + held_out > names:
        raise ValueError(f"{train} training + {held_out} held-out tasks need as many file names; "
                         f"the generator has {names}")
    rng = random.Random(seed)
    drawn, modules, faults = [], set(), set()
    while len(drawn) < train + held_out:
        module = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3)))  # 2 or 3: see `names`
        task = _spec(rng, module)
        if task is None or module in modules or task[1]["old_str"] in faults:
            continue
        modules.add(module)
        faults.add(task[1]["old_str"])
        drawn.append(task)
    rng.shuffle(drawn)
    return drawn[held_out:], drawn[:held_out]


def generate(out_dir: str | Path, seed: int, train: int, held_out: int) -> tuple[Path, Path]:
    """Write every task's repository and out_dir/train.jsonl, out_dir/held_out.jsonl; returns those paths."""
    out = Path(out_dir)
    paths = []
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # git runs in subprocesses
        for split, tasks in zip(("train", "held_out"), specs(seed, train, held_out)):
            rows = list(pool.map(lambda task: {**build_task(task[0], out, bundle=False), "reference_edit": task[1]},
                                 tasks))
            path = out / f"{split}.jsonl"
            path.write_text("".join(json.dumps(row) + "\n" for row in rows))
            paths.append(path)
    return paths[0], paths[1]


def edit_task(directory: str | Path, seed: int, held_out: int, train: int) -> SWETask:
    """The set for (seed, sizes), generated under `directory` unless that version is already there."""
    root = Path(directory).expanduser().resolve()
    version = hashlib.sha256(Path(__file__).read_bytes() + f"{seed},{train},{held_out}".encode()).hexdigest()[:12]
    final = root / version
    if not (final / "held_out.jsonl").exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".generating-", dir=root))
        try:
            generate(tmp, seed, train, held_out)
            publish_generated(tmp, final, "held_out.jsonl")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return SWETask(final / "train.jsonl", name="swe_edit", held_out_path=final / "held_out.jsonl")


@register_task("swe_edit")
def swe_edit_task(cfg) -> SWETask:
    return edit_task(cfg.data_dir, cfg.seed, cfg.eval_size, cfg.train_size)
