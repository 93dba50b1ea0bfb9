"""Do a stage's actors fit the cluster? Checked before anything waits on them.

Ray schedules an actor only when a node has its reserved CPUs free, and otherwise waits, silently, for as
long as it takes: `laconic serve`'s README command (2 shard actors x 1 CPU + an HTTP replica x 1 CPU) waited
forever on a 2-core laptop. So before starting actors, a stage adds up what they reserve:

* on a local cluster (every node on this machine: the one `ensure_ray` started, or `ray start` here) the
  actors are sized to fit: each group's CPUs per actor scaled down alike (shard actors and HTTP replicas
  mostly wait on sockets; fractional CPUs are fine), and the choice is logged;
* on a remote cluster nothing is resized: a request that cannot fit is refused at once, naming the knobs.

Tasks are checked one at a time (``cpus_per_task``): a task runs only on a node with that many CPUs, and when
no node has them Ray waits forever (``laconic index num_cpus_per_task=4`` on a 2-core laptop did, printing an
autoscaler error every 35 s), so a local cluster runs it on its largest node's CPUs and a remote one refuses.

A training worker group is checked whole (``check_worker_group``): on a cluster without an autoscaler, Ray
Train waits 60 s for workers it can never place, calls it a failure, and retries for ever (`laconic train
scaling.use_gpu=true` on a CPU machine did), so such a group is refused before anything starts. Shard actors
are counted per node the same way (``unplaceable``): a cluster's total can hide that no node holds one.

``fit`` and ``placeable`` are the arithmetic (pure); the other functions ask Ray.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from collections.abc import Iterable

log = logging.getLogger(__name__)

MIN_CPUS = 0.05  # Ray's smallest useful fraction here; below it actors are packed without limit


class ResourceError(RuntimeError):
    """A stage's actors cannot all run on this cluster; the message names the knobs."""


def fit(groups: dict[str, tuple[int, float]], cpus: float) -> dict[str, float] | None:
    """CPUs per actor for each group ``name -> (actors, cpus each)`` so that all fit in ``cpus``, scaled by
    one factor (rounded down to 0.05), or None when they already fit."""
    need = sum(count * each for count, each in groups.values())
    if need <= cpus + 1e-9:
        return None
    factor = cpus / need
    return {
        name: max(MIN_CPUS, math.floor(each * factor / MIN_CPUS) * MIN_CPUS)
        for name, (count, each) in groups.items()
    }


def describe(groups: dict[str, tuple[int, float]]) -> str:
    return " + ".join(f"{count} {name} x {each:g} CPU" for name, (count, each) in groups.items() if count)


def local_cluster() -> bool:
    """Is every node of the connected Ray cluster on this machine?"""
    import ray

    here = {"127.0.0.1", ray.util.get_node_ip_address()}
    with contextlib.suppress(OSError):  # a host name that does not resolve: the addresses above will do
        here.add(socket.gethostbyname(socket.gethostname()))
    return all(node["NodeManagerAddress"] in here for node in _alive_nodes())


def _alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def size_for_cluster(groups: dict[str, tuple[int, float]], knobs: str) -> dict[str, float]:
    """CPUs per actor for each group: as asked if they fit the cluster's free CPUs, scaled down to fit on a
    local cluster (logged), else :class:`ResourceError` naming ``knobs``."""
    import ray

    free = ray.available_resources().get("CPU", 0.0)
    sized = fit(groups, free)
    if sized is None:
        return {name: each for name, (_, each) in groups.items()}
    if not local_cluster():
        raise ResourceError(
            f"{describe(groups)} need {sum(c * e for c, e in groups.values()):g} CPUs and the cluster has "
            f"{free:g} free: lower {knobs}, or add nodes"
        )
    resized = {name: (groups[name][0], each) for name, each in sized.items()}
    if sum(count * each for count, each in resized.values()) > free + 1e-9:
        raise ResourceError(
            f"{describe(groups)}: too many actors for this machine's {free:g} free CPUs even at {MIN_CPUS} "
            f"CPU each: lower {knobs}"
        )
    log.info(
        "this machine has %g free CPUs for %s: using %s instead (set %s to choose)",
        free,
        describe(groups),
        describe(resized),
        knobs,
    )
    return sized


def cpus_per_task(asked: float, knob: str) -> float:
    """CPUs for each of a stage's tasks: ``asked`` when some alive node has that many, else (local cluster)
    the largest node's CPUs, logged, else :class:`ResourceError` naming ``knob``."""
    largest = max((node["Resources"].get("CPU", 0.0) for node in _alive_nodes()), default=0.0)
    if asked <= largest + 1e-9:
        return asked
    if largest <= 0 or not local_cluster():
        raise ResourceError(
            f"{knob}={asked:g} but the largest node has {largest:g} CPUs, so no task could ever start: "
            f"lower {knob}, or add nodes with more CPUs"
        )
    log.info("%s=%g but this machine's largest node has %g CPUs: using %g", knob, asked, largest, largest)
    return largest


def placeable(nodes: list[dict[str, float]], per_worker: dict[str, float], strategy: str = "PACK") -> int:
    """How many workers needing ``per_worker`` each fit on ``nodes`` (each node's resource totals): at most one
    per node under ``STRICT_SPREAD``, all on one node under ``STRICT_PACK``."""
    needs = {name: amount for name, amount in per_worker.items() if amount > 0}
    counts = [
        min((int((node.get(k, 0.0) + 1e-9) // v) for k, v in needs.items()), default=1 << 30)
        for node in nodes
    ]
    if strategy == "STRICT_PACK":
        return max(counts, default=0)
    return sum(min(c, 1) for c in counts) if strategy == "STRICT_SPREAD" else sum(counts)


def unplaceable(
    per_actor: dict[str, float], count: int, strategy: str = "PACK"
) -> tuple[int, list[dict[str, float]]] | None:
    """``(how many fit, each node's resources)`` when this cluster can never place ``count`` actors (or
    workers) of ``per_actor`` each, counted per node; None when it can, or when an autoscaler may add nodes
    (then Ray's own checks apply)."""
    try:
        from ray._private.state import state

        if state.get_max_resources_from_cluster_config():
            return None
    except Exception:  # Ray's private API moved: keep Ray's own behaviour
        return None
    nodes = [node["Resources"] for node in _alive_nodes()]
    fits = placeable(nodes, per_actor, strategy)
    return None if fits >= count else (fits, nodes)


def totals(nodes: list[dict[str, float]], keys: Iterable[str]) -> dict[str, float]:
    return {k: sum(node.get(k, 0.0) for node in nodes) for k in keys}


def check_worker_group(per_worker: dict[str, float], workers: int, strategy: str = "PACK") -> None:
    """Raise :class:`ResourceError` when this cluster can never place ``workers`` training workers of
    ``per_worker`` each (Ray Train would wait, fail and retry for ever)."""
    if (short := unplaceable(per_worker, workers, strategy)) is None:
        return
    fits, nodes = short
    has = totals(nodes, per_worker)
    advice = (
        "scaling.use_gpu=false trains on CPUs"
        if per_worker.get("GPU", 0) > 0 and not has["GPU"]
        else "lower scaling.num_workers (or the phase's num_workers) or scaling.cpus_per_worker"
    )
    raise ResourceError(
        f"{workers} training workers of {brief(per_worker)} each: this cluster (no autoscaler; "
        f"{brief(has)} in all) can place {fits} ({strategy})"
        f", and Ray Train would wait for the rest for ever: {advice}, or add nodes"
    )


def brief(resources: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items())
