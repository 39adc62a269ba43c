"""The built-in verifiable task: multi-digit addition, generated procedurally.

Prompt i is a pure function of (seed, i), so a resumed job sees exactly the prompts
it had not trained on yet, and nothing has to be downloaded. The task brings its own
character-level tokenizer, saved in HF format so that transformers and vLLM load it.
"""

from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from cispo.envs.task import TaskRow, register_task

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>"]
CHARACTERS = list("0123456789+=")
# Seeds of the training and held-out streams differ by this much, so they never overlap.
EVAL_SEED_OFFSET = 1_000_003  # the warm-up stream uses twice this


class AdditionTask:
    """`a+b=` -> `c`, with operands of min_digits..max_digits digits."""

    name = "addition"

    def __init__(self, min_digits: int, max_digits: int, seed: int, eval_size: int):
        self.min_digits, self.max_digits = min_digits, max_digits
        self.seed, self.eval_size = seed, eval_size

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    def _row(self, seed: int, index: int) -> TaskRow:
        rng = random.Random(seed * 1_000_000_007 + index)
        a, b = self._operand(rng), self._operand(rng)
        return TaskRow(prompt=f"{a}+{b}=", metadata={"answer": str(a + b), "index": index})

    def row(self, index: int) -> TaskRow:
        """Training prompt number `index` of the stream."""
        return self._row(self.seed, index)

    def eval_rows(self) -> list[TaskRow]:
        return [self._row(self.seed + EVAL_SEED_OFFSET, i) for i in range(self.eval_size)]

    def reference_pair(self, index: int) -> tuple[str, str]:
        """(prompt, reference answer) number `index` of a stream disjoint from training and eval,
        for the supervised warm-up."""
        row = self._row(self.seed + 2 * EVAL_SEED_OFFSET, index)
        return row.prompt, row.metadata["answer"]

    @staticmethod
    def build_tokenizer() -> PreTrainedTokenizerFast:
        """One token per character; `<bos>` is prepended to every encoded text."""
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
        tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
        tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<pad>"
        )


@register_task("addition")
def addition_task(cfg) -> AdditionTask:
    return AdditionTask(cfg.min_digits, cfg.max_digits, cfg.seed, cfg.eval_size)
