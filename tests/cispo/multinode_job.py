"""A job on two simulated Ray nodes (`ray.cluster_utils.Cluster`): the learner on one, the engine on the other.

Run by tests/cispo/test_multinode.py in its own process (a Cluster cannot share a
process with the test session's Ray); prints one JSON line of what it observed:
which node's raylet each actor process ran under, and the engine process it killed.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import cispo  # noqa: E402,F401 - first: once tests/ is on sys.path, tests/cispo/ would pass for the package

sys.path.append(str(Path(__file__).parents[1]))  # tests/: actor_processes

from actor_processes import Killer, actor_processes, raylet_pids, steps_logged  # noqa: E402


class PlacementWatch(threading.Thread):
    """Samples which node's raylet each Learner / VLLMWorker process runs under."""

    def __init__(self, nodes: dict[str, int]):
        super().__init__(daemon=True)
        self.nodes, self.seen = nodes, {(name, title): set() for name in nodes for title in ("Learner", "VLLMWorker")}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for (name, title), pids in self.seen.items():
                pids.update(p.pid for p in actor_processes([self.nodes[name]], title))


def main(output_dir: str) -> None:
    from ray.cluster_utils import Cluster

    from cispo.config import Config, validate
    from cispo.supervise import run_job

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"learner_node": 1}, "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=2, resources={"rollout_node": 1})
        cluster.wait_for_nodes()
        nodes = dict(zip(("learner_node", "rollout_node"), raylet_pids([cluster.head_node, worker])))

        cfg = Config()
        cfg.ray.address = cluster.address
        cfg.learner.resources = {"learner_node": 1}
        cfg.rollout.resources = {"rollout_node": 1}
        cfg.trainer.output_dir, cfg.trainer.steps, cfg.trainer.save_every = output_dir, 3, 0
        cfg.trainer.sft_steps = 0  # the random policy rarely stops early: each generate call runs long enough to hit
        cfg.rollout.prompts_per_step, cfg.rollout.max_new_tokens, cfg.algo.group_size = 8, 48, 4
        cfg.task.eval_size, cfg.logger.progress_bar = 8, False
        validate(cfg)

        watch = PlacementWatch(nodes)
        watch.start()
        with Killer([nodes["rollout_node"]], "VLLMWorker.generate",
                    when=lambda: steps_logged(output_dir) >= 1) as killer:
            result = run_job(cfg)
        watch.stop.set()
        watch.join()
        last = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()
                if "reward/mean" in line][-1]
        print(json.dumps({
            "steps": result["steps"], "killed_engine_pid": killer.pid,
            "rollout_restarts": last["faults/rollout_restarts"],
            **{f"{title}@{name}": sorted(pids) for (name, title), pids in watch.seen.items()},
        }), flush=True)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
