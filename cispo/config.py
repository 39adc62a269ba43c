"""Typed configuration: one dataclass per Hydra group, validated before any actor starts.

Hydra merges conf/config.yaml and its groups onto `Config` (registered as the
schema), so an unknown key or a wrong type fails at once and names the key.
`validate` then checks the rules that span fields, saying the rule it applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class PolicyConfig:
    """The `model` section: which policy the job trains. The hybrid architecture's own config,
    read from and written to its config.json, is `cispo.model.ModelConfig`."""

    # Architecture of the random-init policy the job creates when model.path is null: "qwen2" (dense)
    # or "minimax" (hybrid lightning MoE). With model.path the checkpoint's config.json decides.
    arch: str = "qwen2"
    # Start from this HF checkpoint directory instead of a random init (its tokenizer must sit beside
    # it): any causal LM that transformers and vLLM both load (Llama, Qwen2/3, Mistral, Gemma, ...), or
    # our hybrid model (rollout=builtin or vllm). The sizes below are then ignored.
    path: Optional[str] = None
    hidden_size: int = 128
    num_layers: int = 2
    # head_dim = hidden_size / num_heads; vLLM's CPU kernels need head_dim >= 32.
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 128
    # Hybrid model only: experts per MoE layer, experts per token, and one softmax layer every N.
    num_experts: int = 4
    experts_per_token: int = 2
    softmax_every: int = 8
    # Compute the LM head in FP32 in trainer and sampler (MiniMax-M1: prob correlation 0.987 -> 0.997).
    lm_head_fp32: bool = True
    # Random-init seed of the policy.
    init_seed: int = 0
    # Whether the created policy's LM head is its input embedding matrix (Qwen2's small models, Llama
    # 3.2 1B) or a matrix of its own. Measured tied: one swe_agent warm-up merged ' +' and ' -' (embedding
    # cosine 0.9988) and never told them apart; untied, every init tried learnt the copy sooner (README).
    tie_embeddings: bool = True
    # The created policy's tokenizer: 0 keeps the task's own (one token per byte or character); N > 259
    # learns a byte-level BPE vocabulary of N tokens from the task's reference pairs (cispo.envs.bpe), so
    # a name the policy copies is a few tokens, not one per byte. Like the sizes, ignored with model.path:
    # the checkpoint's tokenizer (a warm-up checkpoint's is the one learnt) comes with it.
    bpe_vocab: int = 0

@dataclass
class RolloutConfig:
    # "vllm" (vLLM workers; the hybrid model through our plugin) or "builtin" (our own sampler: the hybrid
    # model, or a dense Qwen2 / Llama checkpoint).
    engine: str = "vllm"
    # Rollout actors; each holds one engine.
    num_workers: int = 1
    # Colocated layout (verl's hybrid engine): each learner rank holds one engine in its own process and
    # generates its share of the prompts; weights reach it in memory, not through Ray. The learner and the
    # engine take turns on the rank's devices (on a GPU, vLLM sleeps while the learner steps), so it runs
    # with the synchronous driver only. num_workers, num_cpus/gpus_per_worker and resources are unused.
    colocate: bool = False
    # CPUs reserved per rollout actor (GPUs: see num_gpus_per_worker).
    num_cpus_per_worker: float = 1.0
    num_gpus_per_worker: float = 0.0
    # Prompts sampled per RL step; each gets algo.group_size responses.
    prompts_per_step: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    # -1 disables top-k.
    top_k: int = -1
    # Response length cap in tokens.
    max_new_tokens: int = 16
    # Repetition early stop (MiniMax-M1): stop after N consecutive tokens each with p > repetition_prob; 0 = off.
    repetition_window: int = 0
    repetition_prob: float = 0.99
    # vLLM's KV-cache size on CPU, GiB (VLLM_CPU_KVCACHE_SPACE).
    kv_cache_gib: int = 1
    # vLLM dtype: float32 on this CPU (bf16 kernels crash here); bfloat16 on GPUs.
    dtype: str = "float32"
    # A weight push that takes longer fails the job loudly instead of hanging it.
    weight_push_timeout_s: float = 120.0
    # A generate call that takes longer is treated as a dead engine.
    generate_timeout_s: float = 600.0
    # Async driver: scoring calls kept in flight at once (each spread over the reward workers), so a
    # generate call's groups are scored as soon as it returns, beside the scoring of earlier calls.
    scoring_calls_in_flight: int = 4
    # Async driver: partial rollouts. Responses are generated in segments of partial_segment_tokens;
    # an engine takes weights pushed meanwhile between segments, so an unfinished response goes on
    # under the new version (prompt + its tokens so far as the prompt; earlier tokens keep their
    # behaviour log-probs). Each sample records its version spans; its staleness is its oldest span's.
    partial_rollouts: bool = False
    partial_segment_tokens: int = 4
    # env.mode=agent: episodes played at once (each holds a sandbox and sends one turn at a time to
    # an engine). The async driver keeps them running while the learner trains.
    episodes_in_flight: int = 8
    # Engine actors that die (process killed, node lost) are replaced, their prompts issued again,
    # up to this many times in a job; one more death fails the job.
    max_restarts: int = 3
    # Custom Ray resources each engine actor requires, e.g. {rollout_node: 1}: pins engines to the
    # nodes started with `ray start --resources='{"rollout_node": 8}'`. Empty: any node.
    resources: Dict[str, float] = field(default_factory=dict)

@dataclass
class LearnerConfig:
    # Data-parallel DeepSpeed ranks, one Ray actor each.
    world_size: int = 1
    # A learner call (a step, a checkpoint's save or load) that takes longer fails the job, naming it.
    call_timeout_s: float = 3600.0
    # ZeRO stage: 0, 1, 2 or 3.
    zero_stage: int = 2
    num_cpus_per_rank: float = 1.0
    num_gpus_per_rank: float = 0.0
    lr: float = 1e-4
    # AdamW betas and eps as MiniMax-M1 used them.
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-15
    weight_decay: float = 0.0
    # Clip the global gradient norm to this; 0 disables.
    grad_clip: float = 1.0
    # Samples per forward/backward on one rank; a step accumulates over the rank's whole shard.
    micro_batch_size: int = 64
    # Dense (padded) models: sort a shard's rows by length and cut micro-batches where lengths jump, each
    # trimmed to its own longest row (verl's dynamic batch size), when that saves a tenth of the computed
    # tokens. The hybrid model trains on packed rows and computes no padding either way.
    micro_batches_by_length: bool = True
    gradient_checkpointing: bool = False
    # Optimizer updates per RL step: the step's samples are shuffled (seeded by trainer.seed and the step,
    # so resume is exact) into this many mini-batches, one update each. 1 = one update on the whole batch;
    # more is the off-policy regime where CISPO's clipped IS weight differs from PPO-style clipping.
    mini_batches: int = 1
    # Passes over the step's samples, each reshuffled: mini_batches x epochs updates per step.
    epochs: int = 1
    # Let one group's samples fall into different mini-batches (by default a group stays in one).
    split_groups: bool = False
    # Synchronous driver, CPU ranks: step with every core of the node (split between the ranks on it)
    # as torch threads, not just num_cpus_per_rank: the rollout and reward workers wait while the
    # learner steps. Turn off on a node shared with other jobs. The async driver never borrows cores.
    use_idle_cores: bool = True
    # Custom Ray resources each learner rank requires, e.g. {learner_node: 1}: pins the ranks to the
    # nodes started with `ray start --resources='{"learner_node": 8}'`. Empty: any node.
    resources: Dict[str, float] = field(default_factory=dict)

@dataclass
class AlgoConfig:
    # Policy loss, by registry name (cispo.algo.losses): cispo, cispo_masked, ppo, grpo, dapo, gspo, reinforce.
    loss: str = "cispo"
    # CISPO IS-weight clip: r_hat = clamp(r, 1 - eps_low_is, 1 + eps_high_is); null = the loss's default
    # (cispo.algo.losses.LossParams: 1 and 4, the ScaleRL clip(r, 0, 5), since M1 leaves eps_high_is unpublished).
    eps_low_is: Optional[float] = None
    eps_high_is: Optional[float] = None
    # PPO-style ratio clip for ppo/grpo/dapo/gspo/cispo_masked; null = the loss's published default
    # (PPO 0.2/0.2, DAPO's clip-higher 0.2/0.28, GSPO 3e-4/4e-4).
    clip_low: Optional[float] = None
    clip_high: Optional[float] = None
    # How token losses become one number: token_mean (M1: all response tokens of the batch / their
    # count), seq_mean_token_mean, seq_mean_token_sum_norm (Dr.GRPO); null = the loss's default.
    loss_agg: Optional[str] = None
    # Responses per prompt (G); advantages are normalised within each group.
    group_size: int = 8
    # Advantage estimator, by registry name (cispo.algo.advantages): grpo, drgrpo, rloo.
    advantage: str = "grpo"
    # DAPO dynamic sampling: drop groups whose rewards are all equal (no signal) and sample more.
    dynamic_sampling: bool = False
    # Sampling rounds per step when dynamic sampling keeps dropping groups.
    dynamic_sampling_max_rounds: int = 3
    # Warn (console + W&B alert) when the sampler's and the learner's token probabilities
    # correlate less than this (M1 measured 0.987 with a bf16 LM head, 0.997 with FP32).
    mismatch_alarm: float = 0.99
    # old_logp of the loss: "rollout" (the sampler's log-probs) or "recompute" (one extra no-grad
    # forward of the learner's current weights before the update). Mismatch metrics always compare
    # the sampler with the learner.
    old_logp: str = "rollout"
    # Rollout correction (cispo.algo.corrections): none, tis_token, tis_seq (truncated IS), mis_token,
    # mis_seq, mis_geo (masked IS), icepop. It weights or rejects each token's loss by
    # rho = pi_old / pi_rollout, so it needs old_logp=recompute; the loss keeps its own pi_theta / pi_old.
    correction: str = "none"
    # The correction's bounds on rho (reject outside [low, high]; tis_* truncate at high);
    # null = the correction's default (tis/mis: 2 above, icepop: [0.5, 5], mis_geo: [0.999, 1.001]).
    correction_low: Optional[float] = None
    correction_high: Optional[float] = None
    # MoE routing replay (R3): the learner's MoE layers send each token to the experts the sampler
    # routed it to (recorded by the built-in sampler, prompt included) instead of their own top-k; the
    # gate weights still come from the learner's router, renormalised over those experts, so the router
    # keeps training. Tokens without a record use the learner's own top-k. moe/routing_agreement (own top-k
    # set = sampler's) and moe/layer{i}/load_max_over_mean are logged either way.
    routing_replay: bool = False
    # DAPO overlong reward shaping: over the last overlong_buffer tokens before the response cap the
    # reward gets a penalty rising linearly to -overlong_penalty (DAPO: 4096 of 20480, 1.0); 0 = off.
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    # DAPO overlong filtering: responses cut at the cap (finish_reason "length") are masked from the loss.
    mask_truncated: bool = False
    # Staged length curriculum (M1: 40K -> ... -> 80K): response caps, strictly increasing; the job
    # starts at the first (it replaces rollout.max_new_tokens) and moves to the next when the step's
    # p99 response length >= curriculum_near_cap x cap and the last curriculum_window values of
    # curriculum_metric span <= curriculum_min_delta. Empty = off.
    curriculum_caps: List[int] = field(default_factory=list)
    curriculum_near_cap: float = 0.95
    curriculum_window: int = 10
    curriculum_min_delta: float = 0.01
    curriculum_metric: str = "reward/mean"

@dataclass
class TaskConfig:
    # A registered task (addition, dataset, math, swe, swe_synthetic, swe_edit; cispo.envs.task) or your own as
    # "package.module:Class" / "/path/to/file.py:Class", built as Class(task config).
    name: str = "addition"
    # Addition: operands have between min_digits and max_digits digits.
    min_digits: int = 1
    max_digits: int = 2
    # Seed of the prompt stream; prompt i is a pure function of (seed, i), so resume is exact.
    seed: int = 1234
    # Held-out prompts for evaluation (drawn from a disjoint seed).
    eval_size: int = 64
    # SWE tasks: where swe_synthetic / swe_edit write (and reuse) their generated task sets; relative to the cwd.
    data_dir: str = "outputs/swe_synthetic_tasks"
    # swe_edit: how many training tasks to generate (file names are unique: train + eval_size <= 4352).
    train_size: int = 256
    # (task=swe takes `path`: a SWE-bench-shaped tasks.jsonl, the rows `cispo-env score` reads.)
    # task=swe checks its tasks before training (gold and empty patch graded twice each, as
    # `cispo-env validate`; cached per file under ~/.cache/cispo/task_checks). Tasks that fail:
    # refuse (the job stops, naming them), drop (train without them) or keep (no check at all).
    flagged_tasks: str = "refuse"
    # Dataset tasks (task=dataset, task=math): a JSONL / JSON / Parquet / CSV file, or a directory
    # written by datasets' save_to_disk; read with the `datasets` library (memory-mapped Arrow).
    path: Optional[str] = None
    # Column of the prompt: a string, or OpenAI-style chat messages [{"role": ..., "content": ...}].
    prompt_key: str = "prompt"
    # Column of the ground truth (may be absent from the data). Every column reaches the reward in metadata.
    answer_key: str = "answer"
    # Held-out rows: a file of their own, or else eval_size rows of `path` held out by `seed`.
    eval_path: Optional[str] = None
    # A system message put before every plain-string prompt when a chat template renders it; null = none.
    system_prompt: Optional[str] = None
    # auto: the tokenizer's own chat template when it has one; none: plain text; or a .jinja file's path.
    chat_template: str = "auto"
    # A prompt longer than model.max_position_embeddings - rollout.max_new_tokens tokens: drop the row
    # (counted in data/dropped_rows, one example logged) or error (naming file and row).
    overlong_prompt: str = "drop"
    # Your own task's settings (open: any keys), read by it as cfg.args["key"].
    args: Dict[str, Any] = field(default_factory=dict)

@dataclass
class EnvConfig:
    # How a SWE task (task=swe, swe_synthetic, swe_edit) is played. single_shot: the response is a diff in a
    # ```diff block, graded by reward.fn. agent: a multi-turn episode in a Docker sandbox (tools bash,
    # str_replace_editor, submit), graded by the task's tests; reward.fn is not called.
    mode: str = "single_shot"
    # Agent episode limits: model turns, response tokens (model + observations), tokens per turn,
    # tokens per observation, seconds per tool call, and seconds of turns per episode.
    max_turns: int = 8
    max_response_tokens: int = 2048
    max_turn_tokens: int = 256
    max_observation_tokens: int = 256
    tool_timeout_s: float = 30.0
    episode_timeout_s: float = 600.0
    # Describe the tools in the prompt (built-in text format; a chat template declares them anyway).
    # false: a terse prompt (~150 byte tokens instead of ~900) for a policy that learns the calls by SFT.
    tool_docs: bool = True
    # An episode that ends without submit (out of turns, tokens or time, or stopped for repetition): true
    # grades the repository as it left it (SWE-agent's autosubmit); false scores it 0 as status unsubmitted
    # without running the tests, so RL cannot learn to leave out the submit. Evaluation follows the same rule.
    grade_unsubmitted: bool = True

@dataclass
class RewardConfig:
    # The reward function: "package.module:fn" or "/path/to/file.py:fn".
    # Signature: fn(prompt: str, response: str, metadata: dict) -> float | {"score": float, ...}; async ok.
    fn: str = "cispo.reward.builtin:addition_reward"
    # fn takes lists (prompts, responses, metadatas) and returns a list.
    batched: bool = False
    # Per-sample time limit; a call past it is recorded as an error and the sample masked. Calls run
    # one after another; once one has timed out, the rest of the step start at once (no N x wait).
    timeout_s: float = 10.0
    # Stop the job when more than this fraction of a step's samples failed to score.
    max_error_fraction: float = 0.5
    # Reward worker actors scoring in parallel.
    num_workers: int = 1

@dataclass
class LoggerConfig:
    # W&B project; the run is offline unless WANDB_API_KEY is set (mode "auto").
    project: str = "cispo"
    # auto | offline | online | disabled
    mode: str = "auto"
    # Log a table of sample prompts/responses/rewards every N steps.
    table_every: int = 10
    # Rows in that table.
    table_rows: int = 8
    # Show a progress bar on the console.
    progress_bar: bool = True

@dataclass
class TrainerConfig:
    # RL steps (one learner update each).
    steps: int = 60
    # Everything the job writes: checkpoints, W&B files, Hydra's record of the config.
    output_dir: str = "outputs/default"
    # Sampling seed: rollout engine i samples with seed + i.
    seed: int = 0
    # Save an HF + DeepSpeed checkpoint every N steps (and at the end); 0 = only at the end.
    save_every: int = 20
    # Continue from the last complete checkpoint in output_dir (same step, optimizer state and data
    # position): "auto" resumes when one exists and starts fresh otherwise (saying so); "true" resumes
    # and is an error when there is none; "false" starts fresh and clears output_dir.
    resume: str = "false"
    # When a learner rank dies mid-run, tear the job down and start it again from its last
    # checkpoint (as resume=auto), up to this many times; counted in faults/learner_restarts.
    max_restarts: int = 0
    # Supervised warm-up on the task's reference answers before RL; 0 steps turns it off. It fits
    # the policy's own log-probs (temperature 1), whatever rollout.temperature is.
    sft_steps: int = 100
    sft_batch_size: int = 64
    sft_lr: float = 1e-3
    # Save a checkpoint (step 0) after the warm-up: a job that dies during RL resumes from it without
    # warming up again, and its hf/ can start other RL runs (model.path=... trainer.sft_steps=0).
    save_warm_up: bool = False
    # Evaluate greedy accuracy on the held-out split every N steps, and at step 0 (after the warm-up,
    # before any RL step); 0 = only at the end.
    eval_every: int = 0
    # Also sample this many responses per held-out prompt at rollout.temperature and log pass@k
    # (unbiased estimator) for k = 1, 2, 4, ..., eval_samples; 0 = greedy only.
    eval_samples: int = 0
    # A sample generated by policy version v is trained on at learner step s only if
    # s - v <= max_staleness. 0 runs the synchronous driver (train.py); >= 1 the
    # asynchronous one (train_async.py), which generates while the learner trains.
    max_staleness: int = 0

@dataclass
class RayConfig:
    # Cluster address ("auto" or "ray://host:port"); None starts a local Ray.
    address: Optional[str] = None
    # CPUs a local Ray may use; None = all of the machine.
    num_cpus: Optional[int] = None
    # How long the job waits for room in the cluster for its learner ranks; past it the job fails,
    # naming what the ranks asked for and what is free. (An ask no node could ever hold fails at once.)
    placement_timeout_s: float = 300.0

@dataclass
class Config:
    model: PolicyConfig = field(default_factory=PolicyConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ray: RayConfig = field(default_factory=RayConfig)

class ConfigError(ValueError):
    """A config that parses but breaks a rule; the message names the key."""

def _check(ok: bool, key: str, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {rule}")

RESUME_MODES = ("auto", "true", "false")


def resume_mode(value: bool | str) -> str:
    """trainer.resume as one of RESUME_MODES (a YAML/CLI `true` arrives as a bool or as "True")."""
    mode = str(value).lower()
    _check(mode in RESUME_MODES, "trainer.resume", f"must be auto, true or false, got {value!r}")
    return mode


# Config keys whose values are open dicts: any key under them is the user's own.
OPEN_DICTS = ("rollout.resources", "learner.resources", "task.args")


def unknown_keys(values: dict, schema: type = None, prefix: str = "") -> list[str]:
    """Keys of a composed config (plain dicts) that the schema has no field for: Hydra's `+key=value`
    adds them past the schema, and `OmegaConf.to_object` would drop them without a word."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(schema or Config)}
    out = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            out.append(dotted)
        elif isinstance(value, dict) and dotted not in OPEN_DICTS and dataclasses.is_dataclass(fields[key].default_factory):
            out += unknown_keys(value, fields[key].default_factory, dotted + ".")
    return out


def _check_routing_replay(cfg: Config) -> None:
    """algo.routing_replay needs an MoE policy and an engine that records the experts it routed to."""
    m, r = cfg.model, cfg.rollout
    if m.path:
        from cispo.policy import HYBRID_MODEL_TYPE, checkpoint_config

        hf = checkpoint_config(m.path)
        moe, experts = hf.get("model_type") == HYBRID_MODEL_TYPE, hf.get("num_local_experts", 0)
        model = f"model.path={m.path} (model_type {hf.get('model_type')!r})"
    else:
        moe, experts, model = m.arch == "minimax", m.num_experts, f"model.arch={m.arch}"
    _check(moe, "algo.routing_replay", f"{model} has no MoE layers whose routing could be replayed")
    _check(experts <= 256, "algo.routing_replay",
           f"the sampler records expert ids one byte each (up to 256 experts); the model has {experts}")
    _check(r.engine == "builtin", "algo.routing_replay",
           f"rollout.engine={r.engine} records no routing: only the built-in sampler does (rollout=builtin)")


def validate(cfg: Config) -> Config:
    """Check the rules that span fields; raise ConfigError naming the key and the rule."""
    from cispo.envs.task import task_names

    m, r, l, a, t, rw, tr = cfg.model, cfg.rollout, cfg.learner, cfg.algo, cfg.task, cfg.reward, cfg.trainer
    _check(m.arch in ("qwen2", "minimax"), "model.arch", f"must be qwen2 or minimax, got {m.arch!r}")
    _check(m.hidden_size % m.num_heads == 0, "model.hidden_size",
           f"{m.hidden_size} is not divisible by model.num_heads={m.num_heads}")
    _check(m.hidden_size // m.num_heads >= 32, "model.num_heads",
           f"head_dim = {m.hidden_size}/{m.num_heads} = {m.hidden_size // m.num_heads} < 32 (vLLM's kernels need >= 32)")
    _check(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
           f"model.num_heads={m.num_heads} is not divisible by {m.num_kv_heads}")
    from cispo.envs.bpe import BASE_VOCAB

    _check(m.bpe_vocab == 0 or m.bpe_vocab > BASE_VOCAB, "model.bpe_vocab",
           f"must be 0 (the task's tokenizer) or more than the {BASE_VOCAB} special and byte tokens, got {m.bpe_vocab}")
    _check(r.engine in ("vllm", "builtin"), "rollout.engine", f"must be vllm or builtin, got {r.engine!r}")
    if m.path:  # the checkpoint's config.json decides the architecture
        from cispo.policy import PolicyError, check_servable

        try:
            check_servable(m.path, r.engine)
        except PolicyError as e:
            raise ConfigError(str(e)) from e
    _check(r.num_workers >= 1, "rollout.num_workers", "must be >= 1")
    if r.colocate:
        _check(r.num_workers == 1, "rollout.num_workers", f"is {r.num_workers}, but rollout.colocate=true puts one "
               f"engine in each learner rank (learner.world_size={l.world_size} of them): leave it at 1")
        _check(tr.max_staleness == 0, "trainer.max_staleness",
               f"is {tr.max_staleness}, but rollout.colocate=true runs the synchronous driver only: the learner "
               "and its engine take turns on the same devices, so there is no generation to overlap a step "
               "with. Use max_staleness=0, or rollout.colocate=false for the async driver")
    _check(r.prompts_per_step >= 1, "rollout.prompts_per_step", "must be >= 1")
    _check(r.temperature > 0, "rollout.temperature", "must be > 0 (log-probs are of the tempered policy)")
    _check(0 < r.top_p <= 1, "rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    _check(r.max_new_tokens >= 1, "rollout.max_new_tokens", "must be >= 1")
    _check(l.world_size >= 1, "learner.world_size", "must be >= 1")
    _check(l.zero_stage in (0, 1, 2, 3), "learner.zero_stage", f"must be 0-3, got {l.zero_stage}")
    _check(l.lr > 0, "learner.lr", "must be > 0")
    samples = r.prompts_per_step * a.group_size
    _check(samples % l.world_size == 0, "rollout.prompts_per_step",
           f"rollout batch {r.prompts_per_step} x algo.group_size {a.group_size} = {samples} samples "
           f"is not divisible by learner.world_size {l.world_size}")
    _check(a.group_size >= 2, "algo.group_size", "must be >= 2 (advantages are relative within a group)")
    from cispo.algo.losses import resolve_loss

    try:
        resolve_loss(a, r.max_new_tokens)
    except ValueError as e:  # name the key the message is about
        key = next((k for k in ("eps_low_is", "eps_high_is", "clip_low", "clip_high", "loss_agg") if k in str(e)), "loss")
        raise ConfigError(f"algo.{key}: {e}") from e
    _check(a.old_logp in ("rollout", "recompute"), "algo.old_logp", f"must be rollout or recompute, got {a.old_logp!r}")
    from cispo.algo.corrections import resolve_correction

    try:
        correction = resolve_correction(a)
    except ValueError as e:
        keys = "algo.correction" if "unknown" in str(e) else "algo.correction_low, algo.correction_high"
        raise ConfigError(f"{keys}: {e}") from e
    _check(correction is None or a.old_logp == "recompute", "algo.correction",
           f"{a.correction} weights the loss by pi_old / pi_rollout, which is 1 unless algo.old_logp=recompute")
    if a.routing_replay:
        _check_routing_replay(cfg)
    _check(l.mini_batches >= 1, "learner.mini_batches", "must be >= 1")
    _check(l.epochs >= 1, "learner.epochs", "must be >= 1")
    units, unit = (r.prompts_per_step, "groups") if not l.split_groups else (samples, "samples")
    _check(l.mini_batches <= units, "learner.mini_batches",
           f"{l.mini_batches} mini-batches of a step's {units} {unit} (rollout.prompts_per_step "
           f"{r.prompts_per_step}{'' if not l.split_groups else f' x algo.group_size {a.group_size}'}) leave some "
           f"empty{'; learner.split_groups=true splits groups' if not l.split_groups else ''}")
    smallest = units // l.mini_batches * (a.group_size if not l.split_groups else 1)
    _check(smallest >= l.world_size, "learner.mini_batches",
           f"the smallest of {l.mini_batches} mini-batches holds {smallest} samples, fewer than "
           f"learner.world_size={l.world_size} ranks (each rank takes a share of every mini-batch)")
    _check(a.overlong_buffer >= 0, "algo.overlong_buffer", "must be >= 0")
    caps = list(a.curriculum_caps)
    _check(all(c >= 1 for c in caps) and all(x < y for x, y in zip(caps, caps[1:])), "algo.curriculum_caps",
           f"must be positive and strictly increasing, got {caps}")
    _check(a.overlong_buffer <= min(caps or [r.max_new_tokens]), "algo.overlong_buffer",
           f"{a.overlong_buffer} exceeds the response cap {min(caps or [r.max_new_tokens])}")
    _check(not caps or caps[-1] < m.max_position_embeddings, "algo.curriculum_caps",
           f"the last cap {caps[-1] if caps else 0} must be < model.max_position_embeddings={m.max_position_embeddings}")
    _check(t.min_digits >= 1 and t.max_digits >= t.min_digits, "task.max_digits",
           f"need 1 <= task.min_digits <= task.max_digits, got {t.min_digits}, {t.max_digits}")
    e = cfg.env
    _check(e.mode in ("single_shot", "agent"), "env.mode", f"must be single_shot or agent, got {e.mode!r}")
    _check(t.flagged_tasks in ("refuse", "drop", "keep"), "task.flagged_tasks",
           f"must be refuse, drop or keep, got {t.flagged_tasks!r}")
    _check(t.name != "swe" or bool(t.path), "task.path",
           "task=swe needs task.path: a tasks.jsonl of SWE-bench rows (the file `cispo-env score` reads)")
    for key in ("max_turns", "max_response_tokens", "max_turn_tokens", "max_observation_tokens", "tool_timeout_s",
                "episode_timeout_s"):
        _check(getattr(e, key) > 0, f"env.{key}", f"must be > 0, got {getattr(e, key)}")
    _check(r.episodes_in_flight >= 1, "rollout.episodes_in_flight", f"must be >= 1, got {r.episodes_in_flight}")
    if e.mode == "agent":
        _check(t.name in ("swe", "swe_synthetic", "swe_edit") or ":" in t.name, "env.mode",
               f"agent episodes play SWE tasks (task=swe, swe_synthetic or swe_edit), not task.name={t.name!r}")
        _check(e.max_response_tokens < m.max_position_embeddings, "env.max_response_tokens",
               f"{e.max_response_tokens} leaves no room for the prompt in model.max_position_embeddings="
               f"{m.max_position_embeddings}: raise model.max_position_embeddings (an agent's prompt with its "
               "tool docs is ~1,500 byte tokens) or lower env.max_response_tokens")
    _check(t.name in task_names() or ":" in t.name, "task.name",
           f"{t.name!r} is unknown; built-in: {', '.join(task_names())}, or 'package.module:Class' / "
           "'/path/to/file.py:Class' for your own")
    from cispo.reward.loader import RewardLoadError, load_reward_fn

    try:  # the reward workers load it again; a typo fails here, before any actor starts
        load_reward_fn(rw.fn)
    except RewardLoadError as e:
        raise ConfigError(str(e)) from e
    _check(rw.timeout_s > 0, "reward.timeout_s", "must be > 0")
    _check(0 <= rw.max_error_fraction <= 1, "reward.max_error_fraction", "must be in [0, 1]")
    _check(cfg.logger.mode in ("auto", "offline", "online", "disabled"), "logger.mode",
           f"must be auto, offline, online or disabled, got {cfg.logger.mode!r}")
    if cfg.ray.address is None and cfg.ray.num_cpus is not None:  # a local Ray of a fixed size: would it fit?
        ranks = l.world_size * l.num_cpus_per_rank
        engines = 0 if r.colocate else r.num_workers * r.num_cpus_per_worker
        _check(ranks + engines <= cfg.ray.num_cpus, "ray.num_cpus",
               f"the job's actors reserve {ranks + engines:g} CPUs ({l.world_size} learner ranks x "
               f"learner.num_cpus_per_rank={l.num_cpus_per_rank:g} + {r.num_workers} rollout engines x "
               f"rollout.num_cpus_per_worker={r.num_cpus_per_worker:g}) but ray.num_cpus={cfg.ray.num_cpus}: "
               "they would wait for each other forever. Leave ray.num_cpus null (logical CPUs are time-shared) "
               "or shrink the job")
    _check(tr.steps >= 1, "trainer.steps", "must be >= 1")
    _check(tr.sft_steps >= 0, "trainer.sft_steps", "must be >= 0")
    _check(tr.max_staleness >= 0, "trainer.max_staleness", "must be >= 0")
    _check(tr.eval_samples >= 0, "trainer.eval_samples", "must be >= 0")
    tr.resume = resume_mode(tr.resume)
    _check(tr.max_restarts >= 0, "trainer.max_restarts", "must be >= 0")
    _check(r.max_restarts >= 0, "rollout.max_restarts", "must be >= 0")
    _check(r.scoring_calls_in_flight >= 1, "rollout.scoring_calls_in_flight", "must be >= 1")
    _check(r.partial_segment_tokens >= 1, "rollout.partial_segment_tokens", "must be >= 1")
    _check(not (r.partial_rollouts and tr.max_staleness == 0), "rollout.partial_rollouts",
           "needs the async driver (trainer.max_staleness >= 1): the synchronous one pushes no weights mid-generation")
    return cfg
