"""A byte-level BPE tokenizer learnt from a task's own texts, for a policy the job creates.

The tokenizers the tasks build for a random-init policy give one token per byte (or per
character), so a name the policy must copy from the issue into its tool call is as many
tokens as it has bytes, and every one must come out right. Merges learnt from the task's
reference pairs (prompts and answers, as the warm-up sees them) make it a few tokens. The
split is GPT-2's (a space joins the word after it, so ` +` and ` q` are tokens of their
own in `u + q - 6`); the 256 bytes stay in the vocabulary, so any text still round-trips.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from cispo.envs.swe_task import SPECIAL_TOKENS

BASE_VOCAB = len(SPECIAL_TOKENS) + 256  # the special tokens and one token per byte: no merges


def pair_texts(prompt: str | list[dict], answer: str | list[str]) -> list[str]:
    """The texts of one reference pair to learn merges from: a prompt or its messages' contents, an
    answer or its turns."""
    return ([prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]) + \
        ([answer] if isinstance(answer, str) else list(answer))


def learn_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Up to `vocab_size` tokens: `<pad>`, `<bos>`, `<eos>`, the 256 bytes and the merges most frequent in
    `texts`; `<bos>` is prepended to every encoded text, as the tasks' own tokenizers do."""
    if vocab_size <= BASE_VOCAB:
        raise ValueError(f"a BPE vocabulary needs more than the {BASE_VOCAB} special and byte tokens, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                       special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   clean_up_tokenization_spaces=False)  # spaces before punctuation are code
