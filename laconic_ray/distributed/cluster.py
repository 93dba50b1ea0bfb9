"""Connect to Ray, or start a local cluster in-process, from a ``RayConfig``."""

from __future__ import annotations

import logging
import os

import ray

from laconic_ray.config import RayConfig

log = logging.getLogger(__name__)


# Where object storage is and how to reach it: forwarded to workers. Credentials (AWS_ACCESS_KEY_ID,
# AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, profiles) are not: a runtime env is logged by Ray's agents and shown
# on the dashboard, so workers take credentials from their node's own chain (instance role, env, profile).
# The same for the Hugging Face hub: mirror, cache and offline switches travel, HF_TOKEN does not (gated
# repos such as meta-llama/* need it in the nodes' environment, e.g. cluster.yaml's, or `hf auth login` there).
FORWARDED_VARIABLES = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_CA_BUNDLE",
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
)


def worker_env() -> dict | None:
    """A runtime env carrying the driver's ``LACONIC_*`` variables and the storage endpoint and region to the
    workers it starts (a cluster's workers were started before the job and do not see the driver's
    environment otherwise); never credentials."""
    env = {k: v for k, v in os.environ.items() if k.startswith("LACONIC_") or k in FORWARDED_VARIABLES}
    return {"env_vars": env} if env else None


def task_env() -> dict | None:
    """``worker_env()`` for a task or actor, or None when the job's own runtime env already carries exactly
    those variables (``ensure_ray`` puts them there). A per-task runtime env that differs from the job's
    keeps Ray from using its pre-started workers: every such task or actor waits for a new process (~1 s)."""
    env = worker_env()
    if env is None:
        return None
    job = ray.get_runtime_context().runtime_env.get("env_vars") or {}
    return None if all(job.get(k) == v for k, v in env["env_vars"].items()) else env


# set by Ray's job manager in the environment of a submitted job's driver (ray/_private/runtime_env/constants.py)
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

# Ray Train's controller polls workers every 2 s by default, and a worker's report waits for the poll: with
# reports every few seconds that is a large share of a step. Local clusters poll faster.
LOCAL_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def ensure_ray(config: RayConfig) -> None:
    """Use the running Ray (a job on a cluster, a test session), else connect or start as configured.

    Workers inherit ``LACONIC_*`` variables and the storage endpoint from the driver through the job's
    runtime env, so that data roots and object-storage endpoints mean the same everywhere.
    """
    if ray.is_initialized():
        return
    runtime_env = worker_env()
    address = config.address or os.environ.get("RAY_ADDRESS")  # set for drivers of `ray job submit`
    if address:
        if os.environ.get(JOB_CONFIG_ENV):
            # the driver of a submitted job: the job's runtime env already reaches every worker (and put its
            # variables in this environment); declaring them again is a conflict Ray refuses
            runtime_env = None
        log.info("connecting to Ray at %s", address)
        ray.init(address=address, runtime_env=runtime_env, configure_logging=False)
        return
    log.info("starting a local Ray cluster (num_cpus=%s)", config.num_cpus)
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)  # the driver's environment is what local workers inherit
    ray.init(
        num_cpus=config.num_cpus,
        object_store_memory=config.object_store_memory,
        include_dashboard=config.include_dashboard,
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        configure_logging=False,
    )


def shutdown_ray(timeout_s: float = 30.0) -> bool:
    """``ray.shutdown()`` that cannot hang this process; True if it finished cleanly.

    Ray 2.60's shutdown unsubscribes its error/log subscribers from the GCS with an RPC that has no deadline.
    After a long session that RPC can wait ~20 minutes for a connection to time out (seen at the end of our
    test session; ray-project/ray#44836, #45044). So: shut down in a thread; if it is still stuck after
    ``timeout_s``, kill the processes of the local cluster this process started, which fails the RPC and lets
    the shutdown finish.
    """
    import atexit
    import threading

    if not ray.is_initialized():
        return True
    node = ray._private.worker._global_node  # the local cluster, when this process started one
    thread = threading.Thread(target=ray.shutdown, name="laconic-ray-shutdown", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not thread.is_alive():
        return True
    log.warning(
        "ray.shutdown() still running after %.0f s (a known Ray hang); killing the local cluster", timeout_s
    )
    if node is not None and node.head:
        node.kill_all_processes(check_alive=False, allow_graceful=False)
    thread.join(timeout_s)
    if thread.is_alive():  # it holds Ray's shutdown lock: the exit-time shutdown would wait on it forever
        atexit.unregister(ray._private.worker.shutdown)
    return False
