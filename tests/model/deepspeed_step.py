"""One DeepSpeed training step of the model, run as its own process (ZeRO's process-group state stays here).

Usage: python deepspeed_step.py STAGE CHECKPOINTING PORT -> prints one JSON line:
loss before and after the step on the same batch, and how much the weights moved.
Needs DS_ACCELERATOR=cpu on a machine without GPUs (the test sets it).
"""

from __future__ import annotations

import json
import os
import sys

import deepspeed
import torch
import torch.distributed as dist
import torch.nn.functional as F

import cispo.model as cm


def main(stage: int, checkpointing: bool, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    config = cm.ModelConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, block_size=16, num_local_experts=4,
        layer_types=["linear_attention", "full_attention", "linear_attention"],
    )
    model = cm.LightningMoELM(config)
    if checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), eps=1e-15)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config={
            "train_micro_batch_size_per_gpu": 1,
            "gradient_accumulation_steps": 1,
            "zero_optimization": {"stage": stage},
            "zero_allow_untested_optimizer": True,
            "gradient_clipping": 1.0,
        },
    )
    ids = torch.randint(0, 128, (1, 60), generator=torch.Generator().manual_seed(1))
    cu = torch.tensor([0, 25, 60], dtype=torch.int32)  # two packed documents

    def loss_fn() -> tuple[torch.Tensor, torch.Tensor]:
        out = engine(ids, cu_seqlens=cu)
        nll = F.cross_entropy(out.logits[0, :-1], ids[0, 1:])
        return nll, nll + config.router_aux_loss_coef * out.aux_loss

    def snapshot() -> dict[str, torch.Tensor]:
        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=stage == 3):
            return {n: p.detach().clone() for n, p in engine.module.named_parameters()}

    before = snapshot()
    with torch.no_grad():
        loss_before = loss_fn()[0].item()
    engine.train()
    _, loss = loss_fn()
    engine.backward(loss)
    engine.step()
    after = snapshot()
    with torch.no_grad():
        loss_after = loss_fn()[0].item()
    moved = sorted(n for n in before if not torch.equal(before[n], after[n]))
    print(json.dumps({"loss_before": loss_before, "loss_after": loss_after, "moved": moved, "total": len(before)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]))
