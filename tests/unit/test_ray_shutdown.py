"""shutdown_ray: a hung ``ray.shutdown()`` is unblocked by killing the local cluster, never waited on forever."""

from __future__ import annotations

import threading

import ray

from laconic_ray.distributed import cluster


class _FakeNode:
    head = True

    def __init__(self, released: threading.Event) -> None:
        self.released = released
        self.killed = False

    def kill_all_processes(self, check_alive: bool, allow_graceful: bool) -> None:
        self.killed = True
        self.released.set()  # as in the real hang: the RPC fails once the GCS is gone


def test_a_hung_shutdown_kills_the_local_cluster_and_returns(monkeypatch):
    released = threading.Event()
    node = _FakeNode(released)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray._private.worker, "_global_node", node)
    monkeypatch.setattr(ray, "shutdown", lambda: released.wait(30))
    assert cluster.shutdown_ray(timeout_s=0.2) is False
    assert node.killed


def test_a_clean_shutdown_kills_nothing(monkeypatch):
    node = _FakeNode(threading.Event())
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray._private.worker, "_global_node", node)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(1))
    assert cluster.shutdown_ray(timeout_s=5) is True
    assert calls == [1] and not node.killed
