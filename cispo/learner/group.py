"""The learner ranks as Ray actors in one placement group, driven as a single learner.

A rank that dies surfaces as `LearnerDiedError` from whichever call saw it; the
job's supervisor (`cispo.supervise`) then restarts the job from its last checkpoint.
"""

from __future__ import annotations

import functools
import math
import time
from collections import Counter

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from cispo.learner.batch import TrainBatch
from cispo.learner.micro import plan_micro_batches
from cispo.config import Config
from cispo.learner.rank import Learner, merge_rank_metrics
from cispo.learner.rendezvous import free_port
from cispo.algo.losses import LossSpec, loss_normalizer
from cispo.policy import is_hybrid
from cispo.rollout.engines import EngineSpec


class LearnerTimeoutError(RuntimeError):
    """A learner call (a step, a checkpoint's save or load) ran past learner.call_timeout_s."""


class LearnerDiedError(RuntimeError):
    """A learner rank's actor died (process killed, node lost): the learner's state is gone."""


class LearnerGroup:
    def __init__(self, cfg: Config, model_dir: str, loss: LossSpec):
        lc = cfg.learner
        self.world_size, self.loss = lc.world_size, loss
        self.micro_batch_size, self.call_timeout_s = lc.micro_batch_size, lc.call_timeout_s
        self.model_dir, self._by_length_asked = model_dir, lc.micro_batches_by_length
        bundle = {"CPU": lc.num_cpus_per_rank, **({"GPU": lc.num_gpus_per_rank} if lc.num_gpus_per_rank else {}),
                  **lc.resources}
        self.pg = placement_group([bundle] * lc.world_size, strategy="PACK")
        wait_s = cfg.ray.placement_timeout_s
        try:
            ray.get(self.pg.ready(), timeout=wait_s)
        except ray.exceptions.GetTimeoutError as e:
            remove_placement_group(self.pg)
            raise RuntimeError(f"no room in the Ray cluster for {lc.world_size} learner ranks of {bundle} "
                               f"within ray.placement_timeout_s={wait_s:g} s; free now: "
                               f"{ray.available_resources()}") from e
        actor = ray.remote(Learner)
        addr, port = ray.get(
            ray.remote(num_cpus=0)(free_port).options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=0)
            ).remote()
        )
        self.ranks = [
            actor.options(
                num_cpus=lc.num_cpus_per_rank, num_gpus=lc.num_gpus_per_rank,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=rank),
            ).remote(lc, loss, model_dir, rank, lc.world_size, addr, port, cfg.rollout.temperature)
            for rank in range(lc.world_size)
        ]

    @functools.cached_property
    def micro_batches_by_length(self) -> bool:
        """Cut micro-batches by length: asked, and the model is padded (the hybrid trains packed). Read at
        the first step, so a group is placed (or refused a placement) before its checkpoint is read."""
        return self._by_length_asked and not is_hybrid(self.model_dir)

    def _shards(self, batch: TrainBatch) -> tuple[list[TrainBatch], list[list[torch.Tensor]]]:
        """One shard per rank, and each shard's micro-batches as row indices (`plan_micro_batches`), as
        many on every rank (DeepSpeed needs it equal): at most micro_batch_size rows each, unless the
        smallest shard has fewer rows than that count (a forward of no rows would fail), then one row
        each there and larger micro-batches elsewhere; more where cutting by length saves padding."""
        if len(batch) < self.world_size:
            raise ValueError(f"a batch of {len(batch)} samples cannot feed learner.world_size={self.world_size} ranks")
        n_micro = math.ceil(math.ceil(len(batch) / self.world_size) / self.micro_batch_size)
        shards = batch.chunks(self.world_size)
        plans = plan_micro_batches([s.attention_mask.sum(-1) for s in shards], min(n_micro, len(shards[-1])),
                                   self.micro_batch_size, self.micro_batches_by_length)
        return shards, plans

    def train_step(self, batch: TrainBatch, mini_batches: list[torch.Tensor] | None = None) -> dict:
        """The step's optimizer updates, split over the ranks: one per mini-batch (row indices of
        `batch`, in order), or one on the whole batch. Every rank takes every update on its shard of
        that mini-batch; each update's loss is divided by the mini-batch's own count (the loss's rule:
        trained tokens or sequences), so it is that mini-batch's loss whatever the world size."""
        parts = [batch] if mini_batches is None else [batch.rows(rows) for rows in mini_batches]
        per_rank: list[list[TrainBatch]] = [[] for _ in self.ranks]
        per_rank_plans: list[list[list[torch.Tensor]]] = [[] for _ in self.ranks]
        normalizers = []
        for part in parts:
            shards, plans = self._shards(part)
            for mine, shard in zip(per_rank, shards):
                mine.append(shard)
            for mine, plan in zip(per_rank_plans, plans):
                mine.append(plan)
            normalizers.append(max(loss_normalizer(part.loss_mask, self.loss.params.loss_agg), 1.0))
        results = self._get([r.train_step.remote(shards, plans, normalizers)
                             for r, shards, plans in zip(self.ranks, per_rank, per_rank_plans)], "train_step")
        return merge_rank_metrics(results)

    def sft_step(self, batch: TrainBatch, lr: float) -> dict[str, float]:
        normalizer = max(float(batch.loss_mask.sum()), 1.0)
        shards, plans = self._shards(batch)
        results = self._get([r.sft_step.remote(s, p, normalizer, lr) for r, s, p in zip(self.ranks, shards, plans)],
                            "sft_step")
        return {"sft_loss": sum(m["sft_loss"] for m in results)}

    def logprobs(self, batch: TrainBatch) -> torch.Tensor:
        shards, plans = self._shards(batch)
        return torch.cat(self._get([r.logprobs.remote(s, p) for r, s, p in zip(self.ranks, shards, plans)], "logprobs"))

    def weights_ref(self) -> ray.ObjectRef:
        """The full weights, put once in the object store for every engine to fetch."""
        refs = [r.named_weights.remote() for r in self.ranks]
        self._get(refs[1:], "named_weights")
        ray.wait(refs[:1], fetch_local=False)
        # Rank 0 still answers, so refs[0] holds weights and not the error of its death, which the
        # engines would report as their own (and be replaced for).
        self.optimizer_steps()
        return refs[0]

    def save_hf(self, directory: str) -> None:
        self._get([r.save_hf.remote(directory) for r in self.ranks], "save_hf")

    def save_checkpoint(self, directory: str, tag: str) -> None:
        self._get([r.save_checkpoint.remote(directory, tag) for r in self.ranks], "save_checkpoint")

    def load_checkpoint(self, directory: str, tag: str) -> int:
        return self._get([r.load_checkpoint.remote(directory, tag) for r in self.ranks], "load_checkpoint")[0]

    def host_engines(self, spec: EngineSpec) -> None:
        """A rollout engine in each rank's process (`rollout.colocate`); rank i samples with seed spec.seed + i."""
        self._get([r.host_engine.remote(spec.engine, spec.model_dir, spec.seed + i, spec.kwargs)
                   for i, r in enumerate(self.ranks)], "host_engine")

    def update_engines(self, version: int) -> None:
        """Each rank's colocated engine takes that rank's current weights as policy `version`."""
        versions = self._get([r.update_engine.remote(version) for r in self.ranks], "update_engine")
        if any(v != version for v in versions):
            raise RuntimeError(f"colocated engines report versions {versions} after taking version {version}")

    def use_idle_cores(self) -> list[int]:
        """Let each rank step with all the cores of its node, split between the ranks there.

        For the synchronous driver: it runs generation, scoring and learning one after the
        other, so while the learner steps the rollout and reward workers' cores sit idle (on a
        2-core machine the learner would otherwise use one core of two). Returns each rank's
        thread count."""
        nodes = self._get([r.node_id.remote() for r in self.ranks], "node_id")
        per_node = Counter(nodes)
        return self._get([r.use_cores.remote(per_node[n]) for r, n in zip(self.ranks, nodes)], "use_cores")

    def optimizer_steps(self) -> int:
        return self._get(self.ranks[0].optimizer_steps.remote(), "optimizer_steps")

    def _get(self, refs, call: str):
        """ray.get of the ranks' `call` that fails as soon as one rank died (the others may wait for it in
        a collective), or when the call runs past learner.call_timeout_s."""
        pending = [refs] if isinstance(refs, ray.ObjectRef) else list(refs)
        deadline = time.monotonic() + self.call_timeout_s
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
                if not done:
                    raise LearnerTimeoutError(f"the learner's {call} did not finish within learner.call_timeout_s="
                                              f"{self.call_timeout_s:g} s on {len(pending)} of {self.world_size} ranks")
                ray.get(done)
            return ray.get(refs)
        except ray.exceptions.RayActorError as e:
            raise LearnerDiedError(f"a learner rank died: {e}") from e

    def shutdown(self) -> None:
        """Stop the ranks gracefully; ranks already dead (or hung) are killed."""
        try:
            ray.get([r.shutdown.remote() for r in self.ranks], timeout=60)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass  # killed below either way
        finally:
            for r in self.ranks:
                ray.kill(r)
            remove_placement_group(self.pg)
