"""The learnt BPE tokenizer (model.bpe_vocab): any text round-trips, and a task's names are few tokens."""

from __future__ import annotations

import pytest

from cispo.envs.bpe import BASE_VOCAB, learn_bpe_tokenizer
from cispo.envs.swe_edit_tasks import specs
from cispo.envs.swe_task import SWETask


def test_a_learnt_vocabulary_shortens_the_tasks_texts_and_round_trips_any_text():
    train, held_out = specs(seed=0, train=400, held_out=20)
    issues = [spec.problem_statement for spec, _ in train]
    tokenizer = learn_bpe_tokenizer(issues, 400)
    assert BASE_VOCAB < len(tokenizer) <= 400
    byte_tokenizer = SWETask.build_tokenizer()
    for spec, edit in held_out:  # unseen file names and expressions are still a few tokens each
        text = spec.problem_statement
        ids = tokenizer(text).input_ids
        assert ids[0] == tokenizer.bos_token_id and tokenizer.decode(ids, skip_special_tokens=True) == text
        assert len(ids) < len(byte_tokenizer(text).input_ids) / 2
    unseen = "naïve → ünïcode\t\r\n  def f(x):\n\treturn x  # 😀 `a`, \"b\"\x00"
    ids = tokenizer(unseen, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == unseen  # the 256 bytes are tokens: nothing is unknown or lost
    assert {tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token} == {"<pad>", "<bos>", "<eos>"}


def test_a_vocabulary_no_larger_than_the_bytes_is_refused():
    with pytest.raises(ValueError, match=f"more than the {BASE_VOCAB} special and byte tokens, got 100"):
        learn_bpe_tokenizer(["some text"], 100)
