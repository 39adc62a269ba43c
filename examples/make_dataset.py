"""Write examples/arith.jsonl: 200 small arithmetic questions with their answers.

Most prompts are plain strings; every fourth is a chat (a system message, then the
question) to show both shapes a dataset row's `prompt` may take. Seeded, so the file
this writes is the file in the repository:

    python examples/make_dataset.py            # -> examples/arith.jsonl
    cispo-train task=dataset task.path=examples/arith.jsonl reward.fn=examples/my_reward.py:reward
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def rows(n: int = 200, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        op = rng.choice(sorted(OPERATIONS))
        a, b = rng.randint(0, 20), rng.randint(0, 9 if op == "*" else 20)
        question = f"What is {a} {op} {b}?"
        prompt = ([{"role": "system", "content": "Answer with the number only."}, {"role": "user", "content": question}]
                  if k % 4 == 3 else question)
        out.append({"id": k, "prompt": prompt, "answer": str(OPERATIONS[op](a, b)), "op": op})
    return out


def main(path: Path) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("arith.jsonl"))
