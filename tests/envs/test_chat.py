"""Prompt encoding with a real chat template, and the overlong-prompt rule.

The tokenizer is built here (nothing can be downloaded): whole words, special tokens for the
role markers, and a post-processor that adds <s> to plain text the way Llama-style tokenizers
do, so a template that renders its own <s> shows whether encode() re-tokenised its text.
"""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from cispo.envs.chat import (OverlongPrompts, PromptEncoder, PromptError, as_prompt, encode_row, eval_rows_that_fit,
                             where)
from cispo.envs.dataset import DatasetTask
from cispo.envs.task import TaskRow

SPECIALS = ["<pad>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
WORDS = ["what", "is", "two", "plus", "three", "five", "be", "brief", "hello", "[unk]"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# A template that refuses a chat not starting with a user or system turn, as many real ones do.
STRICT = ("{% if messages[0]['role'] not in ['user', 'system'] %}"
          "{{ raise_exception('the first message must be from the user') }}{% endif %}" + TEMPLATE)


def make_tokenizer(template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[unk]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="[unk]", additional_special_tokens=SPECIALS[3:])
    tokenizer.chat_template = template
    return tokenizer


def ids(*tokens: str) -> list[int]:
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    return [vocab[t] for t in tokens]


def test_a_string_prompt_is_one_user_message_rendered_by_the_template():
    tokenizer = make_tokenizer()
    got = PromptEncoder(tokenizer).encode("what is two plus three")
    assert got == ids("<s>", "<|user|>", "what", "is", "two", "plus", "three", "<|assistant|>")
    assert got == tokenizer.apply_chat_template([{"role": "user", "content": "what is two plus three"}],
                                                add_generation_prompt=True, tokenize=True, return_dict=False)


def test_encode_returns_the_templates_ids_not_a_retokenisation_of_its_text():
    tokenizer = make_tokenizer()
    encoder = PromptEncoder(tokenizer)
    text = encoder.text("hello")
    assert text == "<s><|user|> hello <|assistant|>"
    assert tokenizer(text).input_ids[:2] == ids("<s>", "<s>")  # plain tokenisation would add a second BOS
    assert encoder.encode("hello") == ids("<s>", "<|user|>", "hello", "<|assistant|>")


def test_the_system_prompt_goes_before_a_string_prompt_only():
    encoder = PromptEncoder(make_tokenizer(), system_prompt="be brief")
    assert encoder.encode("hello") == ids("<s>", "<|system|>", "be", "brief", "<|user|>", "hello", "<|assistant|>")
    chat = [{"role": "user", "content": "hello"}]
    assert encoder.encode(chat) == ids("<s>", "<|user|>", "hello", "<|assistant|>")


def test_chat_messages_are_rendered_in_order():
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is two plus three"},
            {"role": "assistant", "content": "five"}, {"role": "user", "content": "hello"}]
    assert PromptEncoder(make_tokenizer()).encode(chat) == ids(
        "<s>", "<|system|>", "be", "brief", "<|user|>", "what", "is", "two", "plus", "three",
        "<|assistant|>", "five", "<|user|>", "hello", "<|assistant|>")


def test_without_a_template_a_string_is_tokenised_as_plain_text():
    for encoder in (PromptEncoder(make_tokenizer(None)), PromptEncoder(make_tokenizer(), chat_template="none")):
        assert encoder.encode("two plus three") == ids("<s>", "two", "plus", "three")
        assert encoder.text("two plus three") == "two plus three"


@pytest.mark.parametrize("template,mode,reason", [(None, "auto", "the tokenizer has no chat template"),
                                                   (TEMPLATE, "none", "task.chat_template=none")])
def test_messages_without_a_template_name_the_key_to_set(template, mode, reason):
    encoder = PromptEncoder(make_tokenizer(template), chat_template=mode)
    with pytest.raises(PromptError, match="task.chat_template") as e:
        encoder.encode([{"role": "user", "content": "hello"}])
    assert reason in str(e.value) and "'hello'" in str(e.value)


def test_a_jinja_file_replaces_the_tokenizers_template(tmp_path):
    path = tmp_path / "chat.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}"
                    "<|assistant|>{% endif %}")
    for tokenizer in (make_tokenizer(), make_tokenizer(None)):
        encoder = PromptEncoder(tokenizer, chat_template=str(path))
        assert encoder.encode("hello") == ids("hello", "<|assistant|>")


def test_a_missing_template_file_is_named():
    with pytest.raises(PromptError, match=r"task.chat_template='/no/such.jinja': no such file"):
        PromptEncoder(make_tokenizer(), chat_template="/no/such.jinja")


def test_a_template_that_fails_names_the_template_and_the_prompt(tmp_path):
    encoder = PromptEncoder(make_tokenizer(STRICT))
    chat = [{"role": "assistant", "content": "five " * 100}]
    with pytest.raises(PromptError) as e:
        encoder.encode(chat)
    message = str(e.value)
    assert "the tokenizer's chat template failed" in message and "the first message must be from the user" in message
    assert "'assistant'" in message and "chars)" in message and len(message) < 600  # the prompt, truncated
    path = tmp_path / "broken.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }")  # a syntax error
    with pytest.raises(PromptError, match=f"chat template {path} failed to render the prompt 'hello'"):
        PromptEncoder(make_tokenizer(), chat_template=str(path)).encode("hello")


def test_a_system_prompt_without_a_template_is_refused():
    with pytest.raises(PromptError, match="task.system_prompt is set but task.chat_template=none"):
        PromptEncoder(make_tokenizer(), chat_template="none", system_prompt="be brief")
    with pytest.raises(PromptError, match="task.system_prompt is set but the tokenizer has no chat template"):
        PromptEncoder(make_tokenizer(None), system_prompt="be brief")


def test_a_warm_up_answer_is_its_tokens_then_eos_without_bos():
    five = ids("five", "</s>")
    assert PromptEncoder(make_tokenizer()).encode_answer("five") == (five, [1] * len(five))


def test_a_warm_up_episode_trains_the_policys_turns_and_not_the_observations():
    call, seen, done = ids("what", "is"), ids("two"), ids("plus", "three")
    got = PromptEncoder(make_tokenizer()).encode_answer(["what is", "two", "plus three"])
    assert got == (call + seen + done + ids("</s>"), [1] * len(call) + [0] * len(seen) + [1] * (len(done) + 1))


@pytest.mark.parametrize("answer", [["what", "two"], [], ["what", 3, "two"], 7])
def test_a_malformed_warm_up_answer_is_refused(answer):
    with pytest.raises(PromptError, match="a warm-up answer is a string or an episode's turns"):
        PromptEncoder(make_tokenizer()).encode_answer(answer)


@pytest.mark.parametrize("value,problem", [
    ("  ", "the prompt is empty"),
    (7, "neither a string nor a list of chat messages: int 7"),
    ({"role": "user"}, "neither a string nor a list of chat messages: dict"),
    ([], "empty list of chat messages"),
    (["hello"], "message 0 is str"),
    ([{"role": "user", "content": "hi"}, {"role": "user"}], "message 1 needs a string 'content', got None"),
    ([{"content": "hi"}], "message 0 needs a string 'role'"),
    ([{"role": "", "content": "hi"}], "message 0 has an empty 'role'"),
    ([{"role": "user", "content": ["parts"]}], "message 0 needs a string 'content', got ['parts']"),
])
def test_malformed_prompts_say_what_is_wrong(value, problem):
    with pytest.raises(PromptError) as e:
        as_prompt(value)
    assert problem in str(e.value)


def test_messages_keep_their_keys_but_not_arrows_none_fill():
    chat = [{"role": "user", "content": "hi", "name": None}, {"role": "tool", "content": "5", "name": "calc"}]
    assert as_prompt(chat) == [{"role": "user", "content": "hi"}, {"role": "tool", "content": "5", "name": "calc"}]


def test_overlong_prompts_are_dropped_counted_and_the_first_kept():
    overlong = OverlongPrompts("drop", limit=3)
    assert overlong.fits(3, "row a", "x")
    assert not overlong.fits(4, "row b", "first")
    assert not overlong.fits(9, "row c", "second")
    assert overlong.dropped == 2 and overlong.metrics() == {"data/dropped_rows": 2.0}
    assert "row b: the prompt has 4 tokens, over the limit of 3" in overlong.example and "'first'" in overlong.example


def test_an_overlong_prompt_under_error_names_where_it_is():
    with pytest.raises(PromptError, match="row b: the prompt has 4 tokens, over the limit of 3.*overlong_prompt=drop"):
        OverlongPrompts("error", limit=3).fits(4, "row b", "x")
    with pytest.raises(ValueError, match="drop or error, got 'skip'"):
        OverlongPrompts("skip", limit=3)


def write_lengths(path, lengths: list[int]) -> str:
    """A JSONL file whose row k is a prompt of `lengths[k]` words ("hello hello ...")."""
    path.write_text("".join(json.dumps({"prompt": " ".join(["hello"] * n), "k": k}) + "\n"
                            for k, n in enumerate(lengths)))
    return str(path)


def test_eval_rows_that_fit_name_the_eval_file(tmp_path):
    train = write_lengths(tmp_path / "train.jsonl", [1])
    held = write_lengths(tmp_path / "held.jsonl", [1, 9, 2])
    task = DatasetTask(train, eval_path=held)
    rows, prompt_ids = eval_rows_that_fit(task, PromptEncoder(make_tokenizer(None)), OverlongPrompts("drop", 5))
    assert [r.metadata["k"] for r in rows] == [0, 2]
    assert prompt_ids == [ids("<s>", "hello"), ids("<s>", "hello", "hello")]
    with pytest.raises(PromptError, match=r"eval row 1 = .*held.jsonl row 1 \(line 2\): the prompt has 10 tokens"):
        eval_rows_that_fit(task, PromptEncoder(make_tokenizer(None)), OverlongPrompts("error", 5))


def test_a_task_without_where_is_named_by_index():
    class Plain:
        name = "plain"

        def row(self, index):
            return TaskRow(prompt="hello " * (index % 2 * 8 + 1))

    task, row = Plain(), Plain().row(1)
    ids = encode_row(task, PromptEncoder(make_tokenizer(None)), row, 1, "training")
    with pytest.raises(PromptError, match="^training row 1: the prompt has 10 tokens"):
        OverlongPrompts("error", 5).fits(len(ids), where(task, 1, "training"), row.prompt)


def test_a_row_the_template_cannot_render_is_named_by_file_and_row(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "assistant", "content": "five"}]}) + "\n")
    task = DatasetTask(path, eval_size=0)
    with pytest.raises(PromptError, match=r"^training row 0 = .*d.jsonl row 0 \(line 1\): the tokenizer's chat "
                                          r"template failed to render the prompt .*first message must be from"):
        encode_row(task, PromptEncoder(make_tokenizer(STRICT)), task.row(0), 0, "training")
