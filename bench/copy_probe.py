"""Can the policy learn a content-addressed copy, the skill `+experiment=swe_agent`'s edit call needs?

The swe_agent policy's first call copies a file name and two expressions from the issue,
and `bench/swe_edit_copy.py` found the hybrid policy's warm-up never gets a held-out call
byte-exact. This isolates the copy. Each row is 100 random letters holding one bracketed 8-letter string
`[s]` at a random place, then `=`, then s again; the loss is on that second s. Its offset
from the first varies, so only finding the brackets and copying what follows them (an
induction circuit: one layer tells each token its predecessor, the next looks up the token
after the current one) gets it right. Chance is 1/26 a letter (loss ln 26 = 3.26).

The policy is created as the swe_agent job creates it (the dense Qwen2; overrides apply,
e.g. `model=minimax_tiny model.num_layers=2 model.softmax_every=2` for a hybrid of one
lightning and one softmax layer) and trained in plain torch on one process with AdamW at
`--lr`, batch 32; every `--every` steps it prints the training loss and the fraction of 64
fresh rows' copied letters that are the argmax.

    .venv/bin/python bench/copy_probe.py [--steps 1000] [--lr 1e-3] [OVERRIDES...]
"""

from __future__ import annotations

import argparse
import random
import string
import tempfile
import time

import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401 - registers the config schema
from cispo.envs.swe_task import SWETask
from cispo.policy import create_policy, load_policy

ROW = 100  # letters before the copy
COPY = 8  # letters copied


def rows(rng: random.Random, tokenizer, n: int) -> torch.Tensor:
    """(n, tokens) rows `noise [s] noise = s`, padded with x to ROW letters before s."""
    def letters(k: int) -> str:
        return "".join(rng.choice(string.ascii_lowercase) for _ in range(k))

    out = []
    for _ in range(n):
        s = letters(COPY)
        head = f"{letters(rng.randint(10, 40))}[{s}]{letters(rng.randint(10, 40))}="
        out.append(tokenizer(head.ljust(ROW, "x") + s).input_ids)
    return torch.tensor(out)


def copied_logp(model, ids: torch.Tensor) -> torch.Tensor:
    """(B, COPY, V) log-probs at the positions that predict the copied letters."""
    return model(ids).logits[:, -COPY - 1:-1].float().log_softmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of +experiment=swe_agent (model.*)")
    args = parser.parse_args()
    try:
        with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
            cfg = OmegaConf.to_object(compose(config_name="config",
                                              overrides=["+experiment=swe_agent", *args.overrides]))
    except ConfigCompositionException as e:  # an override naming no key, or a value of the wrong type
        parser.error(f"{e} ({str(e.__cause__).splitlines()[0]})" if e.__cause__ else str(e))
    tokenizer = SWETask.build_tokenizer()
    with tempfile.TemporaryDirectory() as directory:
        model = load_policy(create_policy(cfg.model, tokenizer, directory))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    rng = random.Random(cfg.trainer.seed)
    layout = f" (softmax every {cfg.model.softmax_every})" if cfg.model.arch == "minimax" else ""
    print(f"{cfg.model.arch}, {cfg.model.num_layers} layers{layout}, hidden {cfg.model.hidden_size}; "
          f"lr {args.lr:g}, batch 32", flush=True)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids = rows(rng, tokenizer, 32)
        loss = -copied_logp(model, ids).gather(-1, ids[:, -COPY:, None]).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.learner.grad_clip)
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                ids = rows(rng, tokenizer, 64)
                accuracy = float((copied_logp(model, ids).argmax(-1) == ids[:, -COPY:]).float().mean())
            print(f"step {step:5d}  loss {loss.item():.3f}  copied letters right {accuracy:.3f}  "
                  f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
