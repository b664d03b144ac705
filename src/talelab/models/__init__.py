"""Model families behind one interface: `model(idx, targets, cache, start)` -> (logits, loss)."""

from talelab.config import ModelConfig
from talelab.models.compressor import CompressorLM
from talelab.models.recurrent import RecurrentLM
from talelab.models.transformer import Transformer


def build_model(config: ModelConfig):
    """The model `config.family` names, with fresh weights."""
    if config.family == "transformer":
        return Transformer(config)
    return CompressorLM(config) if config.family == "compressor" else RecurrentLM(config)
