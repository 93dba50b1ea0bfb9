"""Sizing actors to a cluster (laconic_ray/distributed/resources.py): the arithmetic, without Ray."""

from __future__ import annotations

from laconic_ray.distributed.resources import describe, fit, placeable


def test_actors_that_fit_are_left_alone_and_others_scaled_alike():
    assert fit({"shard actors": (2, 1.0)}, 4.0) is None
    # the README's `laconic serve` on a 2-core laptop: 2 shards x 1 + 1 HTTP replica x 1 = 3 CPUs > 2
    sized = fit({"shard actors": (2, 1.0), "HTTP replicas": (1, 1.0)}, 2.0)
    assert sized == {"shard actors": 0.65, "HTTP replicas": 0.65}
    assert 2 * sized["shard actors"] + sized["HTTP replicas"] <= 2.0
    assert fit({"shard actors": (100, 1.0)}, 2.0) == {"shard actors": 0.05}  # the floor (the caller refuses)
    assert describe({"a": (2, 1.0), "b": (0, 3.0)}) == "2 a x 1 CPU"


def test_training_workers_are_counted_per_node_and_per_placement_strategy():
    nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 2.0}]
    assert placeable(nodes, {"CPU": 1.0, "GPU": 1.0}) == 3  # GPUs bound it; the CPU-only node holds none
    assert placeable(nodes, {"CPU": 3.0}) == 2 + 1  # per node, not the cluster's 14 CPUs / 3
    assert placeable(nodes, {"CPU": 0.5, "GPU": 0.0}) == 28  # a zero amount is no constraint
    assert placeable(nodes, {"CPU": 1.0}, "STRICT_SPREAD") == 3
    assert placeable(nodes, {"CPU": 1.0}, "STRICT_PACK") == 8
    assert placeable([{"CPU": 1.0}], {"CPU": 1.0, "GPU": 1.0}) == 0
    assert placeable([{"CPU": 0.3 * 10}], {"CPU": 0.3}) == 10  # float sums are not floored one short
    assert placeable([], {"CPU": 1.0}) == 0


def test_shard_actors_no_node_can_hold_are_refused_by_what_each_node_has(monkeypatch):
    from ray._private.state import state

    from laconic_ray.distributed import resources
    from laconic_ray.distributed.serving import _unschedulable

    nodes = [{"CPU": 2.0, "index_shard": 1.0}, {"CPU": 2.0, "index_shard": 1.0}]
    monkeypatch.setattr(resources, "_alive_nodes", lambda: [{"Alive": True, "Resources": n} for n in nodes])
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: None)  # no autoscaler
    assert _unschedulable({"CPU": 1.5}, 2) is None  # one on each node
    # the cluster's 4 CPUs would hold either; its nodes do not (Ray would wait until the startup deadline)
    assert "no node offers 3 CPU (the cluster has 4 CPU in all)" in _unschedulable({"CPU": 3.0}, 1)
    assert "its nodes can hold 2 of them" in _unschedulable({"CPU": 1.5}, 3)
    assert _unschedulable({"CPU": 0.5, "index_shard": 1.0}, 2) is None
    why = _unschedulable({"CPU": 0.5, "index_shard": 1.0}, 4)  # 2 shards x 2 replicas, one unit a node
    assert why.startswith("4 shard actors need 0.5 CPU, 1 index_shard each and its nodes can hold 2 of them")
    assert "lower num_cpus_per_shard or replicas" in why
    assert "no node offers 1 no_such" in _unschedulable({"CPU": 0.5, "no_such": 1.0}, 1)
    # with an autoscaler nodes may come: Ray's own scheduling decides
    monkeypatch.setattr(state, "get_max_resources_from_cluster_config", lambda: {"CPU": 64})
    assert _unschedulable({"CPU": 3.0}, 1) is None
