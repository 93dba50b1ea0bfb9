"""One local Ray cluster for the whole Ray tier.

Logical ``num_cpus=4`` on these 2-core machines: two training workers on a 2-CPU cluster would leave nothing
for Ray Data and hang. Dashboard off (it costs seconds and memory and we never look at it in tests).
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from laconic_ray.distributed.cluster import LOCAL_RAY_ENV

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    for key, value in LOCAL_RAY_ENV.items():  # workers inherit the driver's environment at ray.init
        os.environ.setdefault(key, value)
    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            object_store_memory=1_500_000_000,
            configure_logging=False,
            log_to_driver=True,
        )
    yield ray
    ray.shutdown()
