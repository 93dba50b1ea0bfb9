"""Turn rows of training examples into model inputs under the tokenization contract.

Used as Ray Data's ``collate_fn`` (``iter_torch_batches``): it receives a dict of column arrays and returns a
:class:`TrainBatch`. Layout: query ``i``'s passages are rows ``[i*G, (i+1)*G)`` of the passage batch,
positive first, then ``G - 1`` negatives in the order the miner wrote them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from laconic_ray.model.attention import get_mode
from laconic_ray.model.tokenization import ModelInputs, TextFormat, pad_batch, pad_token_id, tokenize


@dataclasses.dataclass
class TrainBatch:
    queries: ModelInputs
    passages: ModelInputs
    keys: list[str]  # "query_id/positive_id" of each example, in order (what the resume test compares)

    def to(self, device) -> TrainBatch:
        return TrainBatch(self.queries.to(device), self.passages.to(device), self.keys)

    @property
    def num_tokens(self) -> int:
        return self.queries.num_tokens + self.passages.num_tokens


def _column(batch: dict[str, Any], name: str) -> list[Any]:
    values = batch[name]
    return values.tolist() if hasattr(values, "tolist") else list(values)


class ExampleBatcher:
    """Tokenizes example rows into query and passage batches for one phase."""

    def __init__(self, tokenizer, text_format: TextFormat, mode: str, group_size: int) -> None:
        self.tokenizer = tokenizer
        self.text_format = text_format
        self.mode = get_mode(mode)
        self.group_size = group_size
        self.pad_id = pad_token_id(tokenizer)

    def inputs(self, texts: Sequence[str], kind: str) -> ModelInputs:
        laid_out = [self.mode.layout(ids) for ids in tokenize(self.tokenizer, texts, kind, self.text_format)]
        return pad_batch([s for s, _ in laid_out], [p for _, p in laid_out], self.pad_id)

    def __call__(self, batch: dict[str, Any]) -> TrainBatch:
        queries = _column(batch, "query")
        positives = _column(batch, "positive")
        negatives = _column(batch, "negatives") if self.group_size > 1 else [[]] * len(queries)
        passages: list[str] = []
        for i, (positive, negs) in enumerate(zip(positives, negatives, strict=True)):
            negs = list(negs)
            if len(negs) < self.group_size - 1:
                raise ValueError(
                    f"example {i} of the batch has {len(negs)} negatives; group size "
                    f"{self.group_size} needs {self.group_size - 1} (mine with num_negatives >= that)"
                )
            passages.append(positive)
            passages.extend(negs[: self.group_size - 1])
        keys = [
            f"{q}/{p}" for q, p in zip(_column(batch, "query_id"), _column(batch, "positive_id"), strict=True)
        ]
        return TrainBatch(self.inputs(queries, "query"), self.inputs(passages, "passage"), keys)


class TextBatcher:
    """Phase 0 (CSPLADE adaptation): plain passages, causal layout, for the LM and saturation objectives."""

    def __init__(self, tokenizer, text_format: TextFormat) -> None:
        self.tokenizer = tokenizer
        self.text_format = text_format
        self.pad_id = pad_token_id(tokenizer)

    def __call__(self, batch: dict[str, Any]) -> TrainBatch:
        ids = tokenize(self.tokenizer, _column(batch, "positive"), "passage", self.text_format)
        passages = pad_batch(ids, [0] * len(ids), self.pad_id)
        empty = pad_batch([], [], self.pad_id)
        keys = [
            f"{q}/{p}" for q, p in zip(_column(batch, "query_id"), _column(batch, "positive_id"), strict=True)
        ]
        return TrainBatch(empty, passages, keys)
