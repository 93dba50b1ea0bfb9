"""Phase-1 weak supervision: (query, positive) pairs made from any corpus, plus pairs a user supplies.

LACONIC's pre-finetuning adapts a causal LLM to bidirectional attention on millions of weakly related pairs
(title -> body, question -> answer, ...), no labels needed. From a plain corpus we derive two kinds:

* ``title_body``: a document's title as the query, its body as the positive;
* ``first_sentence``: the body's first sentence as the query, the rest of the body as the positive;
* ``cropping``: two independent random spans of the document (title and body), each 10-50% of its words:
  Contriever's independent cropping (Izacard et al., 2022), for corpora with no titles or structure;
* ``inverse_cloze``: a random sentence as the query and the rest of the document as the positive, the sentence
  left in it one time in ten (Lee et al., 2019's inverse cloze task).

The random sources draw from a generator seeded by (seed, document id): the same pairs on every run and
machine, whatever the corpus order; ``pairs_per_document`` draws that many of each.

User pairs come from JSON lines with ``query`` and ``positive`` (and optional ``query_id``/``positive_id``).

Pairs are filtered by length (characters), deduplicated on normalised (query, positive) text, and, when
``max_pairs`` is set, sampled by the smallest seeded hashes (bottom-k sampling: deterministic for a seed,
streaming, independent of corpus order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from laconic_ray.data.beir import Document, iter_jsonl
from laconic_ray.data.examples import Example
from laconic_ray.storage import StorageOptions

SOURCES = ("title_body", "first_sentence", "cropping", "inverse_cloze")
CROP_RATIO = (0.1, 0.5)  # Contriever's span length, a share of the document's words
ICT_KEEP = 0.1  # inverse cloze: how often the query sentence stays in its context (Lee et al.)
_ANY_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")  # inverse cloze also splits lower-case text (Cranfield's)
# a sentence ends at . ! or ? followed by whitespace and an upper-case letter, digit or quote
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_SPACES = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class PairFilter:
    min_query_chars: int = 10
    max_query_chars: int = 500
    min_positive_chars: int = 50
    max_positive_chars: int = 8000

    def accepts(self, query: str, positive: str) -> bool:
        return (
            self.min_query_chars <= len(query) <= self.max_query_chars
            and self.min_positive_chars <= len(positive) <= self.max_positive_chars
            and _normalise(query) != _normalise(positive)
        )


def _normalise(text: str) -> str:
    return _SPACES.sub(" ", text).strip().lower()


def split_first_sentence(text: str) -> tuple[str, str]:
    parts = _SENTENCE_END.split(text.strip(), maxsplit=1)
    return (parts[0].strip(), parts[1].strip()) if len(parts) == 2 else (text.strip(), "")


def corpus_pairs(
    documents: Iterable[Document], sources: Sequence[str], *, seed: int = 0, pairs_per_document: int = 1
) -> Iterator[Example]:
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown weak-pair sources {sorted(unknown)}; choose from {SOURCES}")
    for doc in documents:
        body = doc.text.strip()
        if "title_body" in sources and doc.title.strip() and body:
            yield Example(f"title:{doc.id}", doc.title.strip(), doc.id, body, source="weak:title_body")
        if "first_sentence" in sources:
            first, rest = split_first_sentence(body)
            if first and rest:
                yield Example(f"first:{doc.id}", first, doc.id, rest, source="weak:first_sentence")
        if "cropping" in sources or "inverse_cloze" in sources:
            rng = random.Random(f"{seed}\x00{doc.id}")
            for n in range(pairs_per_document):
                if "cropping" in sources and (pair := independent_crops(doc.full_text(), rng)):
                    yield Example(f"crop{n}:{doc.id}", pair[0], doc.id, pair[1], source="weak:cropping")
                if "inverse_cloze" in sources and (pair := inverse_cloze(body or doc.title, rng)):
                    yield Example(f"ict{n}:{doc.id}", pair[0], doc.id, pair[1], source="weak:inverse_cloze")


def independent_crops(text: str, rng: random.Random) -> tuple[str, str] | None:
    """Two spans drawn independently, each ``CROP_RATIO`` of the words long (None under 4 words)."""
    words = text.split()
    if len(words) < 4:
        return None

    def crop() -> str:
        length = max(1, round(rng.uniform(*CROP_RATIO) * len(words)))
        start = rng.randrange(len(words) - length + 1)
        return " ".join(words[start : start + length])

    return crop(), crop()


def inverse_cloze(text: str, rng: random.Random) -> tuple[str, str] | None:
    """A random sentence, and the text without it (with it, ``ICT_KEEP`` of the time); None under 2 sentences."""
    sentences = [s for s in _ANY_SENTENCE_END.split(text.strip()) if s.strip()]
    if len(sentences) < 2:
        return None
    chosen = rng.randrange(len(sentences))
    keep = rng.random() < ICT_KEEP
    context = sentences if keep else sentences[:chosen] + sentences[chosen + 1 :]
    return sentences[chosen], " ".join(context)


def user_pairs(uri: str, options: StorageOptions | None = None) -> Iterator[Example]:
    """Pairs from a JSON-lines file of ``{"query", "positive"[, "query_id", "positive_id"]}``."""
    for line, record in iter_jsonl(uri, options=options):
        query, positive = record.get("query"), record.get("positive")
        if not isinstance(query, str) or not isinstance(positive, str):
            raise ValueError(f"{uri}:{line}: needs string fields 'query' and 'positive'")
        digest = hashlib.sha1(f"{query}\x00{positive}".encode()).hexdigest()[:16]
        yield Example(
            str(record.get("query_id") or f"pair:{digest}"),
            query,
            str(record.get("positive_id") or f"pair:{digest}"),
            positive,
            source=f"pairs:{uri}",
        )


def _key(example: Example) -> bytes:
    return hashlib.blake2b(
        f"{_normalise(example.query)}\x00{_normalise(example.positive)}".encode(), digest_size=8
    ).digest()


def select_pairs(
    pairs: Iterable[Example],
    filters: PairFilter,
    *,
    max_pairs: int | None = None,
    seed: int = 0,
    counts: dict[str, Any] | None = None,
) -> list[Example]:
    """Filter, deduplicate and (optionally) sample pairs; ``counts`` receives what was dropped and why."""
    counts = counts if counts is not None else {}
    seen: set[bytes] = set()
    kept: list[tuple[bytes, int, Example]] = []  # heap of the max_pairs smallest seeded hashes (negated)
    order = 0
    for example in pairs:
        counts["candidates"] = counts.get("candidates", 0) + 1
        if not filters.accepts(example.query, example.positive):
            counts["filtered_length"] = counts.get("filtered_length", 0) + 1
            continue
        key = _key(example)
        if key in seen:
            counts["duplicates"] = counts.get("duplicates", 0) + 1
            continue
        seen.add(key)
        rank = hashlib.blake2b(key, digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()
        order += 1
        if max_pairs is None:
            kept.append((rank, order, example))
        elif len(kept) < max_pairs:
            heapq.heappush(kept, (_invert(rank), order, example))
        elif _invert(rank) > kept[0][0]:
            heapq.heapreplace(kept, (_invert(rank), order, example))
    if max_pairs is not None:
        counts["sampled_out"] = len(seen) - len(kept)
    # a seeded, order-independent shuffle of what is kept
    result = sorted(kept, key=lambda item: item[0] if max_pairs is None else _invert(item[0]))
    by_source: dict[str, int] = {}
    for _, _, example in result:
        by_source[example.source] = by_source.get(example.source, 0) + 1
    counts["by_source"] = by_source
    return [example for _, _, example in result]


def _invert(rank: bytes) -> bytes:
    """Byte-wise complement: makes heapq's min-heap keep the *smallest* ranks."""
    return bytes(255 - b for b in rank)
