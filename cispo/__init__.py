"""cispo: distributed RL post-training (CISPO) on Ray, vLLM, DeepSpeed and Docker.

This folder is the controller: the typed config (`config`), a job's parts and their
start-up (`job`), the two drivers (`train` synchronous, `train_async` asynchronous),
the bookkeeping both share after each step (`step`), checkpoints, tracking, the CLI.
Its subpackages hold the algorithm (`cispo.algo`) and the learner (`cispo.learner`);
the folders beside it are installed as `cispo.model`, `cispo.rollout`, `cispo.envs`
and `cispo.reward`. Imports run one way: controller -> rollout / envs / reward / model.

Kept light on purpose: importing `cispo.model` must not pull in Ray or DeepSpeed.
"""

__version__ = "0.1.0"
