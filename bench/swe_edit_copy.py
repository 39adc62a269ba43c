"""Does the swe_agent warm-up teach the copy? Held-out exact first calls during SFT, no sandboxes.

`+experiment=swe_agent` is solved by one `str_replace_editor` call that copies the file name
and two expressions from the issue. On 256 tasks' reference episodes a policy memorises them
(0 of 32 held-out tasks resolved after its warm-up). This measures, far faster than the
job, whether SFT on many distinct tasks (`task.train_size`, each seen a few times) makes
the copy generalise: the swe_agent policy (created as the job creates it, `model.*`
overrides apply) trains on the reference episodes of `--train` generated tasks with the job's
SFT loss (mean NLL of the episode's own turns, not the editor's report; gradients clipped at
learner.grad_clip) and its AdamW settings (`learner.*`), in plain torch on one process, and
every `--every` steps reports on `--held-out` other tasks (other file names, other expressions):

    exact calls   the fraction whose whole first call is the argmax at every token under
                  teacher forcing, i.e. whose greedy first call would be byte-exact
    call tokens   the fraction of the calls' tokens that are the argmax
    worst         the call tokens most often missed: the token, how often it is the argmax
                  where it is the target, and what the argmax is instead (e.g. `' +' 0/46 -> ' -'`:
                  a policy that cannot tell + from - and writes - for both)

By default the sets and their order are the job's: `task.train_size` training tasks in the
order the warm-up takes them (the file's) and the `task.eval_size` held-out ones. With the
same init and AdamW settings a run here differs from the job's warm-up only in DeepSpeed's
arithmetic, which is enough for an init to land elsewhere (the README's seed 2: its ` +` and
` -` merged in the job, not here).

Tasks are drawn by `cispo.envs.swe_edit_tasks.specs` (no repositories are built: the
reference episode needs only the issue and the file), so `--train` can be in the thousands.
The policy's tokenizer is the job's: with `model.bpe_vocab=N` (the experiment's 512) one learnt
from the training tasks' prompts and episodes, with `model.bpe_vocab=0` one token per byte.

    .venv/bin/python bench/swe_edit_copy.py [--train N] [--held-out N] [--steps 1500] [--every 100] [OVERRIDES...]
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time

import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

import cispo.cli  # noqa: F401 - registers the config schema
from cispo.config import Config
from cispo.envs.agent_format import BUILTIN_FORMAT
from cispo.envs.bpe import learn_bpe_tokenizer, pair_texts
from cispo.envs.chat import PromptEncoder
from cispo.envs.swe_agent import edit_trajectory
from cispo.envs.swe_edit_tasks import specs
from cispo.envs.swe_task import SWETask
from cispo.job import agent_config
from cispo.learner.batch import sft_batch
from cispo.policy import create_policy, load_policy


def encoded(tasks, tokenizer, cfg: Config) -> list[tuple[list[int], list[int], list[int], int]]:
    """(prompt ids, reference episode ids + EOS, which of them are trained, tokens of its first call) of
    each task, encoded as the job's warm-up encodes them."""
    agent, encoder = agent_config(cfg), PromptEncoder(tokenizer)
    out = []
    for spec, edit in tasks:
        prompt = BUILTIN_FORMAT.prompt(agent.system, spec.problem_statement, agent.tool_docs)
        episode = edit_trajectory(edit, spec.base_files[edit["path"]], BUILTIN_FORMAT)
        ids, trained = encoder.encode_answer(episode)
        out.append((encoder.encode(prompt), ids, trained, trained.index(0)))  # the first call: up to the report
    return out


def tokenizer_for(tasks, cfg: Config):
    """The tokenizer the job gives the policy it creates: the task's, or with model.bpe_vocab one learnt
    from the first 4,096 tasks' prompts and reference episodes (`Job._new_policy_tokenizer`)."""
    if not cfg.model.bpe_vocab:
        return SWETask.build_tokenizer()
    agent = agent_config(cfg)
    texts = [text for spec, edit in tasks[:4096] for text in pair_texts(
        BUILTIN_FORMAT.prompt(agent.system, spec.problem_statement, agent.tool_docs),
        edit_trajectory(edit, spec.base_files[edit["path"]], BUILTIN_FORMAT))]
    return learn_bpe_tokenizer(texts, cfg.model.bpe_vocab)


def batch(pairs, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The warm-up's batch (`sft_batch`): input ids (B, L), the episode's trained targets (B, L-1) (its
    turns, not the editor's report), and which targets are its first call's."""
    prompts, answers, trained, call_tokens = zip(*pairs)
    sft = sft_batch(list(prompts), list(answers), pad_id, list(trained))
    mask = sft.loss_mask.bool()
    call = mask & (mask.cumsum(-1) <= torch.tensor(call_tokens)[:, None])
    return sft.input_ids, mask, call


def target_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, L-1, V) logits of each next token."""
    return model(input_ids).logits[:, :-1].float()


@torch.no_grad()
def held_out_calls(model, pairs, tokenizer) -> tuple[float, float, str]:
    """(exact calls, call tokens, the three call tokens most often missed) on `pairs` under teacher forcing."""
    model.eval()
    exact = right = total = 0
    targets, misses = collections.Counter(), collections.defaultdict(collections.Counter)
    for i in range(0, len(pairs), 16):
        ids, _, call = batch(pairs[i:i + 16], tokenizer.pad_token_id)
        argmax = target_logits(model, ids).argmax(-1)
        hit = argmax == ids[:, 1:]
        exact += int((hit | ~call).all(-1).sum())
        right, total = right + int((hit & call).sum()), total + int(call.sum())
        targets.update(ids[:, 1:][call].tolist())
        for target, instead in zip(ids[:, 1:][call & ~hit].tolist(), argmax[call & ~hit].tolist()):
            misses[target][instead] += 1
    model.train()
    worst = sorted(misses, key=lambda t: sum(misses[t].values()) / targets[t], reverse=True)[:3]
    return exact / len(pairs), right / total, ", ".join(
        f"{tokenizer.decode([t])!r} {targets[t] - sum(misses[t].values())}/{targets[t]} -> "
        f"{tokenizer.decode([misses[t].most_common(1)[0][0]])!r}" for t in worst) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, help="distinct training tasks (default: the job's task.train_size)")
    parser.add_argument("--held-out", type=int, help="held-out tasks (default: the job's task.eval_size)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of +experiment=swe_agent (model.*, trainer.*)")
    args = parser.parse_args()
    try:
        with initialize_config_module(config_module="cispo.conf", version_base="1.3"):
            cfg: Config = OmegaConf.to_object(compose(config_name="config",
                                                      overrides=["+experiment=swe_agent", *args.overrides]))
    except ConfigCompositionException as e:  # an override naming no key, or a value of the wrong type
        parser.error(f"{e} ({str(e.__cause__).splitlines()[0]})" if e.__cause__ else str(e))
    try:
        train, held_out = specs(cfg.task.seed, cfg.task.train_size if args.train is None else args.train,
                                cfg.task.eval_size if args.held_out is None else args.held_out)
    except ValueError as e:  # more tasks than the generator has names
        parser.error(str(e))
    tc = cfg.trainer
    tokenizer = tokenizer_for(train, cfg)
    with tempfile.TemporaryDirectory() as directory:
        model = load_policy(create_policy(cfg.model, tokenizer, directory))
    lc = cfg.learner  # the AdamW settings of the job's warm-up
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.sft_lr, betas=(lc.beta1, lc.beta2), eps=lc.eps,
                                  weight_decay=lc.weight_decay)
    train, held_out = encoded(train, tokenizer, cfg), encoded(held_out, tokenizer, cfg)  # in the job's order
    print(f"{len(train)} training tasks, {len(held_out)} held out; prompt {len(train[0][0])} tokens, episode "
          f"{len(train[0][1])} ({sum(train[0][2])} trained), first call {train[0][3]}; batch {tc.sft_batch_size}, lr {tc.sft_lr:g}, "
          f"AdamW betas {lc.beta1:g}, {lc.beta2:g}, eps {lc.eps:g}, weight decay {lc.weight_decay:g}", flush=True)
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        first = (step - 1) * tc.sft_batch_size
        ids, mask, _ = batch([train[(first + i) % len(train)] for i in range(tc.sft_batch_size)],
                             tokenizer.pad_token_id)
        logp = target_logits(model, ids).log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        loss = -(logp * mask).sum() / mask.sum()  # the warm-up's loss: mean NLL of the episodes' trained tokens
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.learner.grad_clip)  # as the learner's DeepSpeed does
        optimizer.step()
        if step % args.every == 0 or step == args.steps:
            exact, tokens, worst = held_out_calls(model, held_out, tokenizer)
            print(f"step {step:5d}  passes {step * tc.sft_batch_size / len(train):4.1f}  loss {loss.item():.3f}  "
                  f"held-out exact calls {exact:.3f}  call tokens {tokens:.3f}  worst {worst}  "
                  f"{time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
