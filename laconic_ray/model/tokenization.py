"""The tokenization contract: the single place where text becomes model input.

Rules (LACONIC / CSPLADE; breaking any of them silently ruins retrieval quality):

* **No BOS and no EOS are added** (``add_special_tokens=False``). A BOS token becomes an attention sink whose
  LM-head logits dominate the max over tokens and collapse every vector to the same few terms: the released
  LACONIC-1B drops from nDCG@10 0.75 to 0.02 on SciFact with BOS. Special tokens typed inside the *text* are
  split as plain text (``split_special_tokens=True``) so that no input can smuggle a BOS in.
* **Prefixes** ``"query: "`` and ``"passage: "`` (configurable) are prepended before tokenizing; truncation to
  the query / passage max length counts the prefix.
* **Right padding with EOS** as the pad id (the tokenizer's EOS; SEP or PAD for tokenizers that have none).
  Padded positions are masked out of attention *and* out of the max pooling.

``load_tokenizer`` loads any local dir or hub id the normal way, and turns a bare Llama-3 ``tokenizer.model``
(tiktoken BPE ranks, as Meta ships it) into a fast Hugging Face tokenizer offline, caching the conversion.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from laconic_ray import storage

log = logging.getLogger(__name__)

Kind = Literal["query", "passage"]

# Llama-3 pre-tokenizer split pattern (the one Meta's tiktoken encoding uses).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NUM_BASE_TOKENS = 128_000


def llama3_special_tokens() -> list[str]:
    """The 256 special tokens of Llama 3.1 / 3.2, ids 128000..128255 in order."""
    named = {
        0: "<|begin_of_text|>",
        1: "<|end_of_text|>",
        4: "<|finetune_right_pad_id|>",
        6: "<|start_header_id|>",
        7: "<|end_header_id|>",
        8: "<|eom_id|>",
        9: "<|eot_id|>",
        10: "<|python_tag|>",
    }
    out, reserved = [], 0
    for i in range(256):
        if i in named:
            out.append(named[i])
        else:
            out.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return out


def convert_tiktoken_llama3(model_file: str | os.PathLike, output_dir: str | os.PathLike | None = None):
    """Convert Meta's Llama-3 ``tokenizer.model`` into a ``PreTrainedTokenizerFast`` (saved to a cache dir).

    The conversion rebuilds BPE merges from the rank table (a few seconds for 128k ranks), so the result is
    cached by the file's sha256 and later calls only load ``tokenizer.json``.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    model_file = Path(model_file)
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()[:16]
    out = Path(output_dir) if output_dir else storage.cache_root() / "tokenizers" / f"llama3-{digest}"
    if (out / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(out))
    specials = llama3_special_tokens()
    backend = TikTokenConverter(vocab_file=str(model_file), pattern=LLAMA3_PATTERN).converted()
    if backend.get_vocab_size() != LLAMA3_NUM_BASE_TOKENS:
        raise ValueError(
            f"{model_file}: {backend.get_vocab_size()} BPE ranks, a Llama-3 tokenizer.model has "
            f"{LLAMA3_NUM_BASE_TOKENS}"
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=specials[0],
        eos_token=specials[1],
        pad_token=specials[1],
        additional_special_tokens=specials[2:],
        model_max_length=131_072,
        clean_up_tokenization_spaces=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    log.info("converted %s into a fast tokenizer at %s", model_file, out)
    return tokenizer


@functools.cache
def _load_cached(name_or_path: str):
    from transformers import AutoTokenizer

    path = Path(name_or_path)
    tiktoken_file = path if path.is_file() else path / "tokenizer.model"
    has_fast = path.is_dir() and (path / "tokenizer.json").exists()
    if tiktoken_file.is_file() and not has_fast and _is_tiktoken_file(tiktoken_file):
        return convert_tiktoken_llama3(tiktoken_file)
    return AutoTokenizer.from_pretrained(name_or_path)


def _is_tiktoken_file(path: Path) -> bool:
    """tiktoken rank files are lines of ``<base64 token> <rank>``; sentencepiece models are binary protobuf."""
    with open(path, "rb") as f:
        head = f.read(256).split(b"\n", 1)[0].split()
    return len(head) == 2 and head[1].isdigit()


PACKAGED = "laconic:"  # `laconic:<name>`: a tokenizer shipped in laconic_ray/resources (no download)


def packaged_tokenizer(name: str) -> str:
    """The folder of a tokenizer shipped with the package (``laconic:bert-base-uncased``)."""
    from importlib.resources import files

    path = files("laconic_ray") / "resources" / name
    if not path.is_dir():
        shipped = sorted(p.name for p in (files("laconic_ray") / "resources").iterdir() if p.is_dir())
        raise ValueError(f"tokenizer {PACKAGED}{name}: not shipped with laconic_ray (shipped: {shipped})")
    return str(path)


def load_tokenizer(name_or_path: str | os.PathLike):
    """A tokenizer from a local dir, a hub id, a bare Llama-3 ``tokenizer.model`` (file or its dir), or
    ``laconic:<name>`` (shipped with the package: ``laconic:bert-base-uncased``, the tiny preset's).

    Returns a fresh copy each call so that callers may change settings without affecting each other.
    """
    import copy

    name = str(name_or_path)
    if name.startswith(PACKAGED):
        name = packaged_tokenizer(name[len(PACKAGED) :])
    return copy.deepcopy(_load_cached(name))


def pad_token_id(tokenizer) -> int:
    """The id used for right padding: EOS by contract; SEP, then PAD, for tokenizers without an EOS (BERT)."""
    for candidate in (
        tokenizer.eos_token_id,
        getattr(tokenizer, "sep_token_id", None),
        tokenizer.pad_token_id,
    ):
        if candidate is not None:
            return int(candidate)
    raise ValueError(f"{type(tokenizer).__name__} has no EOS, SEP or PAD token to pad with")


@dataclasses.dataclass(frozen=True)
class TextFormat:
    """Prefixes and max lengths (in tokens, prefix included) for queries and passages."""

    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    query_max_length: int = 64
    passage_max_length: int = 192
    special_tokens: bool = False  # add the tokenizer's special tokens (masked-LM SPLADE models only)

    def prefix(self, kind: Kind) -> str:
        return self.query_prefix if kind == "query" else self.passage_prefix

    def max_length(self, kind: Kind) -> int:
        return self.query_max_length if kind == "query" else self.passage_max_length


def tokenize(tokenizer, texts: Sequence[str], kind: Kind, text_format: TextFormat) -> list[list[int]]:
    """Token ids of ``prefix + text`` for each text, truncated to the max length (special tokens included):
    no special tokens added unless ``text_format.special_tokens`` (masked-LM SPLADE models)."""
    if kind not in ("query", "passage"):
        raise ValueError(f"kind must be 'query' or 'passage', got {kind!r}")
    prefix = text_format.prefix(kind)
    encoded = tokenizer(
        [prefix + t for t in texts],
        add_special_tokens=text_format.special_tokens,
        truncation=True,
        max_length=text_format.max_length(kind),
        split_special_tokens=True,
        return_attention_mask=False,
    )
    return encoded["input_ids"]


@dataclasses.dataclass
class ModelInputs:
    """A right-padded batch. ``pool_mask`` marks the positions whose logits enter the max pooling."""

    input_ids: torch.Tensor  # [batch, seq] int64
    attention_mask: torch.Tensor  # [batch, seq] int64, 1 = real token
    pool_mask: torch.Tensor  # [batch, seq] bool

    def to(self, device: torch.device | str) -> ModelInputs:
        return ModelInputs(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.pool_mask)))

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def pad_batch(sequences: Sequence[Sequence[int]], pool_starts: Sequence[int], pad_id: int) -> ModelInputs:
    """Right-pad ``sequences`` with ``pad_id``; pool over ``[pool_starts[i], len(sequences[i]))``."""
    length = max((len(s) for s in sequences), default=0)
    length = max(length, 1)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(sequences), length), dtype=torch.long)
    pool = torch.zeros((len(sequences), length), dtype=torch.bool)
    for i, (seq, start) in enumerate(zip(sequences, pool_starts, strict=True)):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        attention[i, : len(seq)] = 1
        pool[i, start : len(seq)] = True
    return ModelInputs(ids, attention, pool)
