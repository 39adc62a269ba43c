"""cispo.model: the hybrid lightning-attention MoE policy (MiniMax-Text-01 / M1 layout) and its sampler.

Imports nothing of ours but `cispo.types`. Checkpoints are transformers' MiniMax format.
"""

from cispo.model.checkpoint import from_pretrained, save_pretrained
from cispo.model.config import ModelConfig
from cispo.model.modeling import LightningMoELM, LMOutput
from cispo.model.sampler import Sampler

__all__ = ["LMOutput", "LightningMoELM", "ModelConfig", "Sampler", "from_pretrained", "save_pretrained"]
