"""``laconic mine``: training examples for both phases of the curriculum.

Phase 1 writes weak pairs (weak_pairs.py). Phase 2 mines hard negatives for every judged (query, positive) of
a training split:

1. candidates: the top ``depth`` passages of a retriever, BM25 through pyserini by default, or a trained
   checkpoint through our own index (``retriever=model``);
2. negatives come from the rank window ``[window_start, window_end)``, never a judged positive of the query;
3. likely false negatives are dropped: candidates scoring at least ``false_negative_margin`` times the
   positive's own score (an unjudged passage the retriever likes as much as the answer is more often relevant
   than not), then whatever an optional re-scorer hook rejects;
4. ``num_negatives`` are sampled with a generator seeded by (seed, query, positive): the same seed gives the
   same file whatever the order of queries.

Nothing is dropped silently: queries without a judged positive, positives missing from the corpus, and
pairs with too few candidates are counted in the summary (and listed in ``skipped.jsonl``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from laconic_ray import storage
from laconic_ray.config import MineConfig
from laconic_ray.data.beir import BeirDataset, Query
from laconic_ray.data.examples import Example, ExampleWriter
from laconic_ray.data.weak_pairs import PairFilter, corpus_pairs, select_pairs, user_pairs

log = logging.getLogger(__name__)

Ranked = list[tuple[str, float]]
Rescorer = Callable[[str, str, Sequence[str]], Sequence[bool]]


class BM25Retriever:
    """Candidates and single-document scores from BM25 over a Lucene index built on the fly."""

    def __init__(self, dataset: BeirDataset, *, k1: float, b: float, threads: int, cache: str | None) -> None:
        from laconic_ray.data.lucene import BM25, build_bm25_index

        self.name = f"bm25:{dataset.name}"
        self.bm25 = BM25(build_bm25_index(dataset, cache, threads), k1=k1, b=b, threads=threads)

    def candidates(self, queries: Sequence[Query], depth: int) -> dict[str, Ranked]:
        return self.bm25.batch_search([q.text for q in queries], [q.id for q in queries], depth)

    def score(self, query: Query, doc_id: str) -> float:
        return self.bm25.score(query.text, doc_id)


class ModelRetriever:
    """Candidates from a sparse checkpoint: the corpus encoded in-process and searched exactly by our index."""

    def __init__(
        self,
        checkpoint: str,
        ids: list[str],
        texts: list[str],
        *,
        batch_size: int,
        options: storage.StorageOptions | None,
    ) -> None:
        from laconic_ray.index import InvertedIndex
        from laconic_ray.model import SparseEncoder

        self.name = f"model:{checkpoint}"
        self.encoder = SparseEncoder.from_pretrained(checkpoint, options=options)
        self.batch_size = batch_size
        top_k = self.encoder.settings.top_k
        self.docs = self.encoder.encode_documents(texts, batch_size=batch_size, top_k=top_k)
        self.rows = {doc_id: i for i, doc_id in enumerate(ids)}
        self.index = InvertedIndex.build(self.docs, ids, quantization="float32")
        self._queries: dict[str, Any] = {}

    def candidates(self, queries: Sequence[Query], depth: int) -> dict[str, Ranked]:
        vectors = self.encoder.encode_queries([q.text for q in queries], batch_size=self.batch_size)
        for q, i in zip(queries, range(vectors.shape[0]), strict=True):
            self._queries[q.id] = vectors[i]
        results = self.index.batch_search(vectors, depth)
        return {
            q.id: list(zip(ids, scores.tolist(), strict=True))
            for q, (ids, scores) in zip(queries, results, strict=True)
        }

    def score(self, query: Query, doc_id: str) -> float:
        vector = self._queries.get(query.id)
        if vector is None:
            vector = self.encoder.encode_queries([query.text])[0]
        return float(vector.multiply(self.docs[self.rows[doc_id]]).sum())


def load_rescorer(spec: str) -> Rescorer | None:
    """``"module:function"`` -> the function ``(query, positive, candidates) -> keep flags``."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"rescorer {spec!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), name)


def pair_rng(seed: int, query_id: str, positive_id: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x00{query_id}\x00{positive_id}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def filter_candidates(
    ranked: Ranked, judged: set[str], positive_score: float, *, window: tuple[int, int], margin: float
) -> tuple[list[str], dict[str, int]]:
    """Candidates of one (query, positive) that may serve as negatives, in rank order: inside the window, not a
    judged positive, scoring below ``margin`` times the positive's score. Also how many each filter removed."""
    dropped = {"judged": 0, "margin": 0}
    pool = []
    for doc_id, score in ranked[window[0] : window[1]]:
        if doc_id in judged:
            dropped["judged"] += 1
        elif margin > 0 and positive_score > 0 and score >= margin * positive_score:
            dropped["margin"] += 1
        else:
            pool.append(doc_id)
    return pool, dropped


def mine_hard_negatives(config: MineConfig, dataset: BeirDataset, writer: ExampleWriter) -> dict[str, Any]:
    texts = {doc.id: doc.full_text() for doc in dataset.corpus()}
    qrels = dataset.qrels(config.split)
    queries = [q for q in dataset.queries() if q.id in qrels]
    summary: dict[str, Any] = {
        "queries_in_qrels": len(qrels),
        "queries_mined": 0,
        "examples": 0,
        "skipped": {
            "no_judged_positive": 0,
            "positive_not_in_corpus": 0,
            "too_few_candidates": 0,
            "query_text_missing": 0,
        },
        "dropped_candidates": {"judged": 0, "margin": 0, "rescorer": 0},
        "positive_rank": _rank_buckets(config.depth),
    }
    skipped: list[dict[str, Any]] = []
    missing_queries = sorted(set(qrels) - {q.id for q in queries})
    summary["skipped"]["query_text_missing"] = len(missing_queries)
    skipped += [{"query_id": q, "reason": "query id in qrels but not in queries"} for q in missing_queries]

    started = time.perf_counter()
    if config.retriever == "bm25":
        retriever: Any = BM25Retriever(
            dataset, k1=config.bm25_k1, b=config.bm25_b, threads=config.threads, cache=config.index_cache
        )
    else:
        retriever = ModelRetriever(
            config.model,
            list(texts),
            list(texts.values()),
            batch_size=config.batch_size,
            options=config.storage.options(),
        )
    ranked_by_query = retriever.candidates(queries, config.depth)
    summary["retrieval_seconds"] = round(time.perf_counter() - started, 2)
    rescorer = load_rescorer(config.rescorer)
    all_ids = list(texts)

    for query in queries:
        judged = {d for d, rel in qrels[query.id].items() if rel > 0}
        if not judged:
            summary["skipped"]["no_judged_positive"] += 1
            skipped.append({"query_id": query.id, "reason": "no judged positive (all relevance <= 0)"})
            continue
        ranked = ranked_by_query.get(query.id, [])
        rank_of = {doc_id: r for r, (doc_id, _) in enumerate(ranked)}
        mined = False
        for positive_id in sorted(judged):
            if positive_id not in texts:
                summary["skipped"]["positive_not_in_corpus"] += 1
                skipped.append(
                    {
                        "query_id": query.id,
                        "positive_id": positive_id,
                        "reason": "judged positive not in the corpus",
                    }
                )
                continue
            _count_rank(summary["positive_rank"], rank_of.get(positive_id), config.depth)
            score = (
                ranked[rank_of[positive_id]][1]
                if positive_id in rank_of
                else retriever.score(query, positive_id)
            )
            rng = pair_rng(config.seed, query.id, positive_id)
            negatives, dropped = filter_candidates(
                ranked,
                judged,
                score,
                window=(config.window_start, config.window_end),
                margin=config.false_negative_margin,
            )
            for key, value in dropped.items():
                summary["dropped_candidates"][key] += value
            if rescorer is not None and negatives:
                keep = rescorer(query.text, texts[positive_id], [texts[n] for n in negatives])
                summary["dropped_candidates"]["rescorer"] += sum(1 for k in keep if not k)
                negatives = [n for n, k in zip(negatives, keep, strict=True) if k]
            if len(negatives) > config.num_negatives:  # a seeded sample, kept in rank order
                chosen = set(rng.sample(range(len(negatives)), config.num_negatives))
                negatives = [n for i, n in enumerate(negatives) if i in chosen]
            if len(negatives) < config.num_negatives and config.fill == "random":
                exclude = judged | set(negatives)
                while len(negatives) < config.num_negatives:
                    candidate = all_ids[rng.randrange(len(all_ids))]
                    if candidate not in exclude:
                        negatives.append(candidate)
                        exclude.add(candidate)
            if len(negatives) < config.num_negatives:
                summary["skipped"]["too_few_candidates"] += 1
                skipped.append(
                    {
                        "query_id": query.id,
                        "positive_id": positive_id,
                        "reason": f"{len(negatives)} candidates left after filtering, {config.num_negatives} needed",
                    }
                )
                continue
            writer.add(
                Example(
                    query.id,
                    query.text,
                    positive_id,
                    texts[positive_id],
                    negatives,
                    [texts[n] for n in negatives],
                    source=retriever.name + f"/{config.split}",
                )
            )
            summary["examples"] += 1
            mined = True
        summary["queries_mined"] += int(mined)
    if skipped:
        storage.write_bytes(
            storage.join(config.output, "skipped.jsonl"),
            "".join(json.dumps(s) + "\n" for s in skipped).encode(),
            config.storage.options(),
        )
    return summary


def _rank_buckets(depth: int) -> dict[str, int]:
    """Histogram of the positives' candidate ranks (1-based buckets; 'not_retrieved' = beyond depth)."""
    names = ["1", "2-10", "11-100"] + ([f"101-{depth}"] if depth > 100 else [])
    return {**{n: 0 for n in names}, "not_retrieved": 0}


def _count_rank(histogram: dict[str, int], rank: int | None, depth: int) -> None:
    if rank is None:
        histogram["not_retrieved"] += 1
    elif rank == 0:
        histogram["1"] += 1
    elif rank < 10:
        histogram["2-10"] += 1
    elif rank < 100:
        histogram["11-100"] += 1
    else:
        histogram[f"101-{depth}"] += 1


def mine_weak_pairs(config: MineConfig, dataset: BeirDataset, writer: ExampleWriter) -> dict[str, Any]:
    options = config.storage.options()
    streams = []
    if "corpus" in config.sources:
        streams.append(corpus_pairs(dataset.corpus(), config.weak_sources, seed=config.seed,
                                    pairs_per_document=config.pairs_per_document))  # fmt: skip
    streams += [user_pairs(uri, options) for uri in config.pairs]
    if config.reads_qrels:
        texts = {doc.id: doc.full_text() for doc in dataset.corpus()}
        qrels = dataset.qrels(config.split)
        streams.append(
            Example(q.id, q.text, d, texts[d], source=f"qrels:{dataset.name}/{config.split}")
            for q in dataset.queries(config.split)
            for d, rel in sorted(qrels[q.id].items())
            if rel > 0 and d in texts
        )
    counts: dict[str, Any] = {}
    filters = PairFilter(
        config.min_query_chars, config.max_query_chars, config.min_positive_chars, config.max_positive_chars
    )
    chained = (example for stream in streams for example in stream)
    for example in select_pairs(
        chained, filters, max_pairs=config.max_pairs, seed=config.seed, counts=counts
    ):
        writer.add(example)
    counts["examples"] = writer.count
    return counts


def run_mine(config: MineConfig) -> dict[str, Any]:
    options = config.storage.options()
    dataset = BeirDataset(config.dataset, options=options, data_root_dir=config.data_root)
    started = time.perf_counter()
    writer = ExampleWriter(
        config.output,
        num_negatives=0 if config.phase == 1 else config.num_negatives,
        metadata={
            "phase": config.phase,
            "dataset": dataset.root,
            "source": "+".join(sorted(config.sources)),
            "split": config.split if config.reads_qrels else None,
            "seed": config.seed,
        },
        options=options,
    )
    if config.phase == 1:
        summary = mine_weak_pairs(config, dataset, writer)
    else:
        summary = mine_hard_negatives(config, dataset, writer)
    manifest = writer.close()
    summary.update(
        phase=config.phase,
        output=config.output,
        examples=manifest.total_rows,
        seconds=round(time.perf_counter() - started, 2),
    )
    if config.phase == 2:
        ranks = summary["positive_rank"]
        total = sum(ranks.values())
        summary["positives_outside_top100"] = total - ranks["1"] - ranks["2-10"] - ranks["11-100"]
    log.info("mined %d examples into %s", manifest.total_rows, config.output)
    return summary
