"""The sparse encoder: tokenization contract, attention modes, SparseEncoder, losses (pure PyTorch, no Ray)."""

from laconic_ray.model.encoder import EncoderSettings, SparseEncoder
from laconic_ray.model.tokenization import TextFormat, load_tokenizer

__all__ = ["EncoderSettings", "SparseEncoder", "TextFormat", "load_tokenizer"]
