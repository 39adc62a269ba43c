"""One data-parallel learner rank: the policy wrapped by DeepSpeed, behind a narrow interface.

`Learner` is the body of a Ray actor (see `LearnerGroup`). A step takes one optimizer
update per mini-batch, and every rank gets an equal shard of each mini-batch. Losses
are divided by the *global* normaliser (the token or sequence count of the whole
mini-batch) times world_size, because DeepSpeed averages gradients over ranks: the sum
of rank gradients is then exactly the gradient of the mini-batch's loss, so 1 rank and
N ranks take the same updates.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

import torch.nn.functional as F

from cispo.learner.batch import TrainBatch
from cispo.learner.routing import add_routing_sums, routing_sums, sampler_routing
from cispo.config import LearnerConfig
from cispo.algo.diagnostics import mismatch_sums
from cispo.algo.losses import MAX_LOG_RATIO, LossSpec, entropy_from_logits
from cispo.policy import save_hf_checkpoint
from cispo.types import Completion, SamplingParams


def _ds_config(cfg: LearnerConfig, use_gpu: bool) -> dict:
    return {
        # Nominal: the real number of micro-batches is set per step with set_train_batch_size.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": use_gpu},
        # Our optimizer is torch's AdamW (DeepSpeed's fused/CPU Adam need compiled ops).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class Learner:
    def __init__(self, learner_cfg: LearnerConfig, loss: LossSpec,
                 model_dir: str, rank: int, world_size: int, master_addr: str, master_port: int,
                 temperature: float):
        use_gpu = learner_cfg.num_gpus_per_rank > 0
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK="0")
        if not use_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed  # after DS_ACCELERATOR is set: it picks the accelerator on import

        from cispo.policy import is_hybrid, load_policy

        deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
        self.rank, self.world_size = rank, world_size
        self.cfg, self.loss, self.temperature = learner_cfg, loss, temperature
        model = load_policy(model_dir)
        self.packed = is_hybrid(model_dir)  # our hybrid model trains on packed streams
        self.aux_loss_coef = model.config.router_aux_loss_coef if self.packed else 0.0
        if learner_cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = torch.optim.AdamW(model.parameters(), lr=learner_cfg.lr, weight_decay=learner_cfg.weight_decay,
                                      betas=(learner_cfg.beta1, learner_cfg.beta2), eps=learner_cfg.eps)
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=_ds_config(learner_cfg, use_gpu))
        self.engine, self.engine_sleeps, self._engine_asleep = None, False, False  # see host_engine
        self._grad_norm = 0.0  # the last update's, before clipping (`_optimizer_micro_step`)

    # ------------------------------------------------------------------ log-probs

    def _logits(self, batch: TrainBatch, temperature: float) -> torch.Tensor:
        """(B, L-1, V) FP32 logits of every target token, divided by `temperature`.

        Through DeepSpeed's forward (`self.model`), never the bare module: ZeRO-3 gathers weights and
        counts micro-steps there (skipping it silently drops accumulated gradients).
        The hybrid model runs the rows packed into one stream (no padding; the
        lightning state resets at each row's start); its router aux loss is kept
        for the step's loss and its routing sums for the step's moe/ metrics."""
        if not self.packed:
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            return out.logits[:, :-1].float() / temperature
        real = batch.attention_mask.bool()  # (B, L)
        cu_seqlens = F.pad(real.sum(-1).cumsum(0), (1, 0)).to(torch.int32)  # (B+1,)
        routing = sampler_routing(batch, real)  # the sampler's experts: replayed or compared with
        out = self.model(batch.input_ids[real][None], cu_seqlens=cu_seqlens, routing=routing)  # flat (1, total)
        self._aux_loss = out.aux_loss
        self._routing_sums = routing_sums(out.tokens_per_expert, out.agreeing_tokens, routing)
        logits = out.logits[0].new_zeros(*batch.input_ids.shape, out.logits.shape[-1])  # (B, L, V)
        logits[real] = out.logits[0]
        return logits[:, :-1].float() / temperature

    @staticmethod
    def _target_logp(logits: torch.Tensor, batch: TrainBatch) -> torch.Tensor:
        targets = batch.input_ids[:, 1:]  # (B, L-1)
        return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    # ------------------------------------------------------------------ training

    def _micro_batches(self, shard: TrainBatch, plan: list[torch.Tensor]) -> Iterator[TrainBatch]:
        """`shard`'s rows in the micro-batches `plan` (row indices, `cispo.learner.micro`), each without
        the padding all its rows have; the optimizer steps after the last. The boundary is set
        explicitly: DeepSpeed otherwise finds it from a micro-step count kept across calls, which a
        change of count (mini-batches of unequal sizes, the warm-up then RL) puts out of step, so an
        update would take part of the next one's gradient."""
        self.model.set_train_batch_size(len(plan) * self.world_size)
        for i, rows in enumerate(plan):
            self.model.set_gradient_accumulation_boundary(i == len(plan) - 1)
            yield shard.rows(rows).trimmed()

    def train_step(self, shards: list[TrainBatch], plans: list[list[torch.Tensor]], normalizers: list[float]) -> dict:
        """One optimizer update per shard, in order: shard u is this rank's part of the step's mini-batch u,
        `normalizers[u]` that whole mini-batch's count (the loss's rule) and `plans[u]` its micro-batches.

        Returns token-weighted sums (`*_sum`, with `tokens`) over every update so the group can merge ranks
        exactly; the sufficient statistics of sampler-vs-learner token probabilities of the first update
        (the weights the sampler had, in the synchronous driver); and per update the IS-ratio sums
        `is_sums` (n, Σr, Σr², Σ|r-1|) of r = π_θ/π_old, which show how far the later updates are off-policy.
        """
        self._engine_to_sleep()
        self.model.train()
        sums: dict = {"is_sums": []}
        for u, (shard, plan, normalizer) in enumerate(zip(shards, plans, normalizers)):
            is_sums = torch.zeros(4, dtype=torch.float64)
            for mb in self._micro_batches(shard, plan):
                logits = self._logits(mb, self.temperature)  # the sampler's log-probs are of the tempered policy
                logp = self._target_logp(logits, mb)
                # DeepSpeed averages gradients over ranks: dividing by normalizer / world_size makes
                # the averaged gradient that of the whole mini-batch's loss.
                loss, metrics = self.loss(logp, mb.old_logp, mb.advantages, mb.loss_mask,
                                          normalizer=normalizer / self.world_size, token_weights=mb.token_weights)
                if self.packed:  # MoE load balancing, averaged over the update's micro-batches
                    loss = loss + self.aux_loss_coef * self._aux_loss / len(plan)
                self.model.backward(loss, scale_wrt_gas=False)
                self._optimizer_micro_step()
                with torch.no_grad():
                    tokens = float(mb.loss_mask.sum())
                    metrics["entropy"] = float((entropy_from_logits(logits) * mb.loss_mask).sum()) / max(tokens, 1.0)
                    accumulate_metrics(sums, metrics, tokens)
                    _add(sums, {"tokens": tokens})
                    if self.packed:
                        add_routing_sums(sums, self._routing_sums)
                    if u == 0:
                        mismatch = mismatch_sums(mb.sampler_logp, logp, mb.loss_mask).tolist()
                        sums["mismatch_sums"] = [a + b for a, b in zip(sums.get("mismatch_sums", [0.0] * 7), mismatch)]
                    is_sums += is_weight_sums(logp, mb.old_logp, mb.loss_mask)
                    # Summed over micro-batches and ranks this is exactly the mini-batch's loss; the mean over updates.
                    _add(sums, {"loss": float(loss) / self.world_size / len(shards)})
            sums["is_sums"].append(is_sums.tolist())
            _add(sums, {"grad_norm": self._grad_norm / len(shards)})
        return sums

    def _optimizer_micro_step(self) -> None:
        """DeepSpeed's step (the optimizer's at an accumulation boundary), keeping the update's gradient
        norm before clipping in `_grad_norm`: ZeRO keeps it, but without ZeRO DeepSpeed clips in plain
        torch and drops it, so it is measured here (on gradients already averaged over the ranks)."""
        boundary = self.model.is_gradient_accumulation_boundary()
        if boundary and self.cfg.zero_stage == 0:
            grads = [p.grad for p in self.model.module.parameters() if p.grad is not None]
            self._grad_norm = float(torch.nn.utils.get_total_norm(grads))
        self.model.step()
        if boundary and self.cfg.zero_stage > 0:
            self._grad_norm = float(self.model.get_global_grad_norm() or 0.0)

    def sft_step(self, shard: TrainBatch, plan: list[torch.Tensor], normalizer: float, lr: float) -> dict[str, float]:
        """One supervised step: mean NLL of the reference response tokens under the policy itself, not the
        tempered one the sampler draws from (fitting logits / T would leave the policy T times too sharp)."""
        self._engine_to_sleep()
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = 0.0
        for mb in self._micro_batches(shard, plan):
            logp = self._target_logp(self._logits(mb, 1.0), mb)
            loss = -(logp * mb.loss_mask).sum() / (normalizer / self.world_size)
            self.model.backward(loss, scale_wrt_gas=False)
            self.model.step()
            total += float(loss)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr
        return {"sft_loss": total / self.world_size}

    @torch.no_grad()
    def logprobs(self, shard: TrainBatch, plan: list[torch.Tensor]) -> torch.Tensor:
        """(B, L-1) log-probs of the target tokens under the current weights, computed in the micro-batches
        `plan` (row indices); 0 past the longest row of each."""
        self._engine_to_sleep()
        self.model.eval()
        out = torch.zeros(shard.old_logp.shape)
        for rows in plan:
            mb = shard.rows(rows).trimmed()
            logp = self._target_logp(self._logits(mb, self.temperature), mb)
            out[rows, :logp.shape[1]] = logp
        return out

    # ------------------------------------------------------------------ weights and checkpoints

    def named_weights(self) -> list[tuple[str, torch.Tensor]] | None:
        """Full weights as (HF name, tensor) pairs on rank 0 (None elsewhere), the form every
        rollout engine's update_weights takes. Every rank must call it (ZeRO-3 gathers)."""
        return list(self._iter_full_weights()) if self.rank == 0 else self._drain()

    def _drain(self) -> None:
        for _ in self._iter_full_weights():
            pass
        return None

    def _iter_full_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        import deepspeed

        # remove_duplicate=False: tied weights (lm_head = embed_tokens) go out under both names;
        # vLLM may keep separate copies of them (on CPU it repacks the LM head).
        for name, param in self.model.module.named_parameters(remove_duplicate=False):
            with deepspeed.zero.GatheredParameters([param], enabled=self.cfg.zero_stage == 3):
                yield name, param.detach().to("cpu", torch.float32).clone()

    def save_hf(self, directory: str) -> None:
        """An HF-format checkpoint (rank 0 writes; every rank must call for ZeRO-3)."""
        weights = self.named_weights()
        if self.rank == 0:
            save_hf_checkpoint(self.model.module, dict(weights), directory)

    def save_checkpoint(self, directory: str, tag: str) -> None:
        """DeepSpeed state (weights, optimizer, step) for resume; every rank writes its part."""
        self.model.save_checkpoint(directory, tag=tag)

    def load_checkpoint(self, directory: str, tag: str) -> int:
        """Restore weights and optimizer state; returns the optimizer steps taken so far."""
        path, _ = self.model.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        return self.model.global_steps

    # ------------------------------------------------------------------ the colocated engine

    def host_engine(self, engine: str, model_dir: str, seed: int, kwargs: dict) -> int:
        """Start a rollout engine in this rank's process (`rollout.colocate`): it samples while the learner
        waits and the reverse, and takes new weights from this rank's tensors in memory. On a GPU, vLLM
        sleeps (its KV cache and weights freed) while the learner works. Returns its policy version."""
        from cispo.rollout.engines import engine_class

        self.engine_sleeps = engine == "vllm" and torch.cuda.is_available()
        if self.engine_sleeps:
            kwargs = {**kwargs, "enable_sleep_mode": True}
        self.engine = engine_class(engine)(model_dir, seed, **kwargs)
        return self.engine.policy_version()

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        self._wake_engine()
        return self.engine.generate(prompts, params)

    def update_engine(self, version: int) -> int:
        """The engine takes this rank's weights now, as policy version `version`. Every rank must call it
        (ZeRO-3 gathers each parameter from all ranks). Returns the engine's version."""
        import deepspeed

        zero3 = self.cfg.zero_stage == 3

        def weights() -> Iterator[tuple[str, torch.Tensor]]:
            for name, param in self.model.module.named_parameters(remove_duplicate=False):
                with deepspeed.zero.GatheredParameters([param], enabled=zero3):
                    # A gathered parameter is released when its context exits: the engine gets a copy.
                    yield name, param.detach().clone() if zero3 else param.detach()

        self._wake_engine()
        self.engine.update_weights(weights(), version)
        return self.engine.policy_version()

    def policy_version(self) -> int:
        return self.engine.policy_version()

    def _wake_engine(self) -> None:
        if self._engine_asleep:
            self.engine.wake_up()
            self._engine_asleep = False

    def _engine_to_sleep(self) -> None:
        """The learner is about to use the device: a sleeping engine's memory is freed first."""
        if self.engine_sleeps and not self._engine_asleep:
            self.engine.sleep()
            self._engine_asleep = True

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def use_cores(self, ranks_on_node: int) -> int:
        """Step with this node's cores, shared with the other ranks on it, as torch threads (Ray
        gives an actor as many as its num_cpus). Only when nothing else runs while the learner
        steps: see `LearnerGroup.use_idle_cores`. Returns the thread count now in use."""
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks_on_node))
        return torch.get_num_threads()

    def optimizer_steps(self) -> int:
        return self.model.global_steps

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def accumulate_metrics(into: dict[str, float], metrics: dict[str, float], tokens: float) -> None:
    """Fold one micro-batch's metrics in: `*_min`/`*_max` by min/max, the rest as token-weighted `*_sum`."""
    for k, v in metrics.items():
        if k.endswith("_min"):
            into[k] = min(into.get(k, v), v)
        elif k.endswith("_max"):
            into[k] = max(into.get(k, v), v)
        else:
            into[f"{k}_sum"] = into.get(f"{k}_sum", 0.0) + v * tokens


def merge_rank_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """Merge ranks' `train_step` results: token-weighted means for `*_sum`, min/max kept, counts summed."""
    tokens = sum(m["tokens"] for m in per_rank) or 1.0
    out: dict[str, float] = {}
    for key in per_rank[0]:
        values = [m[key] for m in per_rank]
        if key.endswith("_sum"):
            out[key[: -len("_sum")]] = sum(values) / tokens
        elif key.endswith("_min"):
            out[key] = min(values)
        elif key.endswith("_max"):
            out[key] = max(values)
        elif key == "grad_norm":
            out[key] = values[0]  # the global norm (its mean over updates): the same on every rank
        elif key in ("mismatch_sums", "moe_agreement_sums"):
            out[key] = [sum(col) for col in zip(*values)]
        elif key in ("is_sums", "moe_load_sums"):  # per update; per layer
            out[key] = [[sum(col) for col in zip(*rows)] for rows in zip(*values)]
        else:
            out[key] = sum(values)
    return out


def is_weight_sums(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n, Σr, Σr², Σ|r-1|) of r = exp(logp - old_logp) over trained tokens: [4] float64, summable."""
    r = (logp.detach() - old_logp)[mask > 0].double().clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    n = torch.tensor(float(r.numel()), dtype=torch.float64)
    return torch.stack([n, r.sum(), (r * r).sum(), (r - 1).abs().sum()])


def _add(into: dict[str, float], values: dict[str, float]) -> None:
    for k, v in values.items():
        into[k] = into.get(k, 0.0) + v

