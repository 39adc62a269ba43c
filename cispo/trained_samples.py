"""The record of what each learner step trained on: `output_dir/trained_samples.jsonl`.

One line per RL step: the step, the sample ids, the policy version that sampled
each (with partial rollouts the oldest, and the version of each token span), the
prompt indices, and each sample's reward with the details its reward function
returned, its finish reason and advantage. On the steps the W&B sample table is
logged (`logger.table_every`), the first `logger.table_rows` samples also keep their
text token by token (`shown`: prompt, response token pieces, sampler log-probs, loss
mask), for the report's sample browser. Both drivers write it, so "every sample trained at most once, none lost
without being counted" and the staleness bound can be checked from the run itself,
across resumes and restarts. A resumed job keeps the lines up
to its checkpoint's step (`cispo.job.RUN_RECORDS`): the steps after it are trained again from the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from cispo.types import Sample

TRAINED_SAMPLES_FILE = "trained_samples.jsonl"


class TrainedSamplesLog:
    def __init__(self, output_dir: Path, token_texts: Callable[[list[int]], list[str]]):
        """`token_texts`: each token id's text (the tokenizer's decode of that one token)."""
        self.token_texts = token_texts
        self.file = open(output_dir / TRAINED_SAMPLES_FILE, "a")

    def record(self, step: int, prompt_indices: list[int], samples: list[Sample], shown: int = 0) -> None:
        """Step `step` (the version it produced) trained `samples` of the prompts `prompt_indices`; the
        first `shown` of them are kept token by token."""
        record = {"step": step, "learner_step": step - 1, "prompt_indices": prompt_indices,
                  "sample_ids": [s.sample_id for s in samples],
                  "policy_versions": [s.policy_version for s in samples],
                  "rewards": [s.reward for s in samples],
                  # What the reward returned beside its score, and a failed scoring's error.
                  "reward_details": [s.reward_details for s in samples],
                  "reward_errors": [s.reward_error for s in samples],
                  # Partial rollouts: [[version, tokens], ...] per sample; [] = all by policy_version.
                  "version_spans": [s.version_spans for s in samples],
                  "finish_reasons": [s.finish_reason for s in samples],
                  "advantages": [round(s.advantage, 4) for s in samples]}
        if shown:
            record["shown"] = [self._tokens(s) for s in samples[:shown]]
        self.file.write(json.dumps(record, default=str) + "\n")
        self.file.flush()

    def _tokens(self, sample: Sample) -> dict:
        """One sample as the sample browser shows it: the response token by token."""
        return {"prompt": sample.prompt_text, "tokens": self.token_texts(sample.response_ids),
                "logprobs": [round(lp, 4) for lp in sample.behaviour_logprobs], "loss_mask": sample.loss_mask}

    def close(self) -> None:
        self.file.close()
