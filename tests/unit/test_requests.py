"""Query validation and micro-batching (laconic_ray/distributed/requests.py) without Ray."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from laconic_ray.distributed.requests import MicroBatcher, VectorError, _Request, check_vector, to_csr
from laconic_ray.index.inverted import QueryError

VOCAB = 100


@pytest.mark.parametrize(
    ("indices", "values", "field", "message"),
    [
        ([5, 5], [3e38, 3e38], "values", "sum to infinity"),  # each finite; their sum is not (issue 21)
        ([1, 2], [1.0, float("nan")], "values", "finite"),
        ([1], [float("inf")], "values", "finite"),
        ([1], [1e39], "values", "finite"),  # finite in float64, infinite as float32
        ([1], [-0.5], "values", ">= 0"),
        ([1, 100], [1.0, 1.0], "indices", "100 is outside the vocabulary [0, 100)"),
        ([-1], [1.0], "indices", "outside the vocabulary"),
        ([], [], "indices", "no terms"),
        ([1.5], [1.0], "indices", "integers"),
        ([1], ["a"], "values", "numbers"),
        ([1, 2], [1.0], "", "equal-length"),
        (list(range(11)), [1.0] * 11, "indices", "11 terms, the limit is 10"),
    ],
)
def test_bad_vectors_name_the_field(indices, values, field, message):
    with pytest.raises(VectorError, match=re.escape(message)) as caught:
        check_vector(indices, values, VOCAB, max_terms=10)
    assert caught.value.field == field
    with pytest.raises(
        QueryError, match=re.escape(f"query 3: {field + ': ' if field else ''}") + ".*" + re.escape(message)
    ):
        to_csr(
            [{"indices": [1], "values": [1.0]}, {"indices": indices, "values": values}],
            VOCAB,
            first=2,
            max_terms=10,
        )


def test_duplicates_are_summed_and_rows_sorted():
    csr = to_csr([{"indices": [7, 3, 7], "values": [1.0, 2.0, 0.5]}, ([1], [4.0])], VOCAB)
    assert csr.dtype == np.float32 and csr.shape == (2, VOCAB)
    assert csr[0].indices.tolist() == [3, 7] and csr[0].data.tolist() == [2.0, 1.5]
    assert csr[1].indices.tolist() == [1] and csr[1].data.tolist() == [4.0]
    with pytest.raises(QueryError, match="query 0: expected"):
        to_csr([{"indices": [1]}], VOCAB)


def rows(n: int, start: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """n one-term queries whose term id encodes their number (so answers can be checked)."""
    return [(np.array([start + i]), np.ones(1, np.float32)) for i in range(n)]


class Shards:
    """A stand-in for the scatter-gather: answers each row with its term id k times; the first call waits
    until the test releases it, so that others queue behind it deterministically."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def run(self, indptr, indices, values, k, mode):
        self.entered.set()
        self.release.wait(10)
        if np.any(values < 0):
            raise QueryError("negative weight")
        self.batches.append(len(indptr) - 1)
        return [[int(indices[indptr[i]])] * k for i in range(len(indptr) - 1)]


def test_concurrent_callers_share_a_batch_and_get_their_own_answers():
    shards = Shards()
    batcher = MicroBatcher(shards.run, lambda r, k: r[:k], max_queries=64)
    answers: dict[int, list] = {}

    def caller(i: int) -> None:
        answers[i] = batcher.submit(rows(2, 10 * i), k=1 + i % 3, mode="exact")

    first = threading.Thread(target=caller, args=(0,))
    first.start()
    assert shards.entered.wait(10)  # caller 0's batch is "with the shards"
    others = [threading.Thread(target=caller, args=(i,)) for i in range(1, 9)]
    for t in others:
        t.start()
    while len(batcher._queue) < 8:  # every other caller has queued behind it
        threading.Event().wait(0.001)
    shards.release.set()
    for t in [first, *others]:
        t.join(10)
    assert shards.batches == [2, 16]  # the eight queued callers went to the shards together
    for i in range(9):
        k = 1 + i % 3
        assert answers[i] == [[10 * i] * k, [10 * i + 1] * k]  # each caller's rows, cut to its own k
    assert batcher.batches == 2 and batcher.queries == 18 and batcher._inflight == 0


def test_many_threads_many_rounds_every_answer_its_own():
    def echo(indptr, indices, values, k, mode):
        return [int(indices[indptr[i]]) for i in range(len(indptr) - 1)]

    batcher = MicroBatcher(echo, lambda r, k: r, max_queries=8, max_inflight=2)
    wrong = []

    def caller(t: int) -> None:
        for j in range(300):
            n = 1 + j % 3
            got = batcher.submit(rows(n, 1000 * t + 10 * j), 1, "exact")
            if got != [1000 * t + 10 * j + i for i in range(n)]:
                wrong.append((t, j, got))

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and wrong == []
    assert batcher._inflight == 0 and not batcher._queue and batcher.queries == 12 * 600


def test_answered_thread_callers_are_woken_in_a_chain_not_all_at_once():
    """Woken all at once, a batch's callers fight for the GIL (each loser sleeps and wakes again): only the
    first gets a token, each passes it on; a caller holding a leader's slot is awake and is left out."""
    batcher = MicroBatcher(Shards().run, lambda r, k: r)
    batch = [_Request(rows(1), 1, "exact") for _ in range(5)]
    batch[2].lead = True
    batcher._wake(batch)
    assert all(r.finished for r in batch)
    assert [r.wake.qsize() for r in batch] == [1, 0, 0, 0, 0]
    assert batch[0].next is batch[1] and batch[1].next is batch[3] and batch[3].next is batch[4]
    assert batch[4].next is None and batch[2].next is None


def test_a_bad_request_in_a_batch_fails_alone():
    shards = Shards()
    shards.release.set()
    batcher = MicroBatcher(shards.run, lambda r, k: r[:k])
    bad = [(np.array([0]), np.array([-1.0], np.float32))]
    requests = [_Request(rows(1, 1), 2, "exact"), _Request(bad, 2, "exact"), _Request(rows(1, 3), 2, "exact")]
    batcher._execute(requests)
    assert requests[0].result == [[1, 1]] and requests[2].result == [[3, 3]]
    assert isinstance(requests[1].error, QueryError) and requests[1].result is None
    assert shards.batches == [1, 1]  # the batch of three failed once, then each went alone


def test_modes_are_never_mixed_and_batches_respect_max_queries():
    batcher = MicroBatcher(Shards().run, lambda r, k: r[:k], max_queries=4)
    batcher._queue.extend(
        [
            _Request(rows(2), 1, "exact"),
            _Request(rows(1), 1, "approximate"),
            _Request(rows(2), 1, "exact"),
            _Request(rows(1), 1, "exact"),
        ]
    )
    batcher._queued = 6
    first = batcher._take()
    assert [len(r.rows) for r in first] == [2, 2] and all(r.mode == "exact" for r in first)
    assert [r.mode for r in batcher._queue] == ["approximate", "exact"]  # order kept for the next batches


def test_errors_reach_every_caller_of_a_failed_batch():
    def broken(*args):
        raise RuntimeError("shards unreachable")

    batcher = MicroBatcher(broken, lambda r, k: r)
    with pytest.raises(RuntimeError, match="unreachable"):
        batcher.submit(rows(1), 1, "exact")
    assert batcher._inflight == 0  # the slot is free again


def test_a_closed_loop_of_callers_keeps_its_batches_whole():
    """Without waiting, N callers in a closed loop settle into a batch of 1 then one of N-1 (the first caller
    back takes the queue alone); with wait_s, a batch waits for the last batch's callers to come back."""
    sizes = []

    def shards(indptr, indices, values, k, mode):
        sizes.append(len(indptr) - 1)
        threading.Event().wait(0.002)  # the shards' work
        return [0] * (len(indptr) - 1)

    batcher = MicroBatcher(shards, lambda r, k: r, wait_s=1.0)
    start = threading.Barrier(8)

    def caller():
        start.wait()
        for _ in range(40):
            batcher.submit(rows(1), 1, "exact")

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(sizes) == 320 and len(sizes) <= 60, sizes  # ~40 batches of 8, not ~80 of 1 and 7


def test_asyncio_callers_and_threads_share_batches_and_each_gets_its_own():
    """asubmit (the HTTP front end): waiting coroutines hold no thread, a leader thread of the batcher runs
    their batches and leads on for them; thread callers in the same batcher are served alongside; a bad
    query fails only its own caller; a cancelled caller is skipped."""
    import asyncio

    def echo(indptr, indices, values, k, mode):
        if np.any(values < 0):
            raise QueryError("negative weight")
        return [int(indices[indptr[i]]) for i in range(len(indptr) - 1)]

    batcher = MicroBatcher(echo, lambda r, k: r, max_queries=8, max_inflight=2)
    wrong: list = []

    async def caller(t: int) -> None:
        for j in range(100):
            n = 1 + j % 3
            got = await batcher.asubmit(rows(n, 1000 * t + 10 * j), 1, "exact")
            if got != [1000 * t + 10 * j + i for i in range(n)]:
                wrong.append((t, j, got))

    def thread_caller(t: int) -> None:
        for j in range(100):
            if batcher.submit(rows(1, 1000 * t + 10 * j), 1, "exact") != [1000 * t + 10 * j]:
                wrong.append((t, j))

    async def main() -> None:
        threads = [threading.Thread(target=thread_caller, args=(t,)) for t in (50, 51)]
        for t in threads:
            t.start()
        await asyncio.gather(*(caller(t) for t in range(16)))
        bad = [(np.array([0]), np.array([-1.0], np.float32))]
        outcomes = await asyncio.gather(
            batcher.asubmit(bad, 1, "exact"), batcher.asubmit(rows(1, 7), 1, "exact"), return_exceptions=True
        )
        assert isinstance(outcomes[0], QueryError) and outcomes[1] == [7]
        gone = asyncio.ensure_future(batcher.asubmit(rows(1, 9), 1, "exact"))
        gone.cancel()
        assert await batcher.asubmit(rows(1, 8), 1, "exact") == [8]
        for t in threads:
            await asyncio.to_thread(t.join, 60)

    asyncio.run(asyncio.wait_for(main(), 120))
    assert wrong == [] and batcher._inflight == 0 and not batcher._queue
    assert batcher.batches < batcher.queries  # coroutines shared batches


def test_callers_answered_together_are_split_over_the_free_slots():
    """An event loop's callers are answered in one step and come back together: one batch of them all would
    leave the other slot, and the shard threads it would use, idle (16 asyncio clients of a 1-shard service
    were all in every batch). Each free slot gets a share, so two batches are out at once."""
    import asyncio
    import statistics
    import time

    sizes: list[int] = []
    out, peak = [0], [0]
    lock = threading.Lock()

    def shards(indptr, indices, values, k, mode):
        with lock:
            sizes.append(len(indptr) - 1)
            out[0] += 1
            peak[0] = max(peak[0], out[0])
        time.sleep(0.005)  # the shards searching: no GIL held
        with lock:
            out[0] -= 1
        return [int(indices[indptr[i]]) for i in range(len(indptr) - 1)]

    batcher = MicroBatcher(shards, lambda r, k: r, max_inflight=2)

    async def caller(t: int) -> None:
        for j in range(30):
            assert await batcher.asubmit(rows(1, 100 * t + j), 1, "exact") == [100 * t + j]

    async def main() -> None:
        await asyncio.gather(*(caller(t) for t in range(16)))

    asyncio.run(asyncio.wait_for(main(), 120))
    batcher._pool.shutdown(wait=True)  # the leader threads give their slots up just after the last answer
    assert peak[0] == 2 and statistics.median(sizes) <= 8, (peak, sizes)
    assert batcher.queries == 16 * 30 and batcher._inflight == 0 and batcher._executing == 0
