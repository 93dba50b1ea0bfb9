"""`ray job submit` as a data engineer runs it: a real head node (`ray start --head`, its own ports and temp
dir, token authentication on), the README's `ray job submit --runtime-env jobs/runtime_env.yaml -- python
jobs/<stage>.py ...` run from the checkout's root with the runtime env filled in (its data root), and each
job's status, outputs and logs checked: mine -> encode -> index -> eval on CACM, the tiny train preset for a few
steps, and an encode stopped with `ray job stop` mid-way and submitted again."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from laconic_ray import sparse, storage
from tests.conftest import REPO


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A head node of our own (token authentication on); yields ``(env, work dir)``: the environment the
    README's client commands run in. Stopped by killing its process group (not `ray stop`, which would stop
    every Ray on the machine)."""
    work = tmp_path_factory.mktemp("jobs")
    gcs, dashboard, client_port, node_manager, object_manager = _free_ports(5)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LACONIC_"))},
        "RAY_AUTH_MODE": "token",
        # the README's client reads ~/.ray/auth_token; this variable takes precedence over that file and
        # leaves this machine's home alone
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python`, `ray` of this venv
    }
    command = [
        "ray", "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dashboard}",
        "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--ray-client-server-port={client_port}",
        f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}", "--num-cpus=4",
        f"--temp-dir={work / 'ray'}", "--disable-usage-stats",
    ]  # fmt: skip
    log = (work / "head.log").open("w")
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dashboard}"  # README: export RAY_ADDRESS=http://127.0.0.1:8265
    try:
        deadline = time.monotonic() + 180
        while not _listening(dashboard) and time.monotonic() < deadline:  # cheap: a `ray` call is ~2 s of CPU
            assert process.poll() is None, (work / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        while (listed := ray_job(env, "list", check=False)).returncode != 0:
            assert process.poll() is None, (work / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"the head node's job API did not come up: {listed.stderr}"
            time.sleep(2)
        yield env, work
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def ray_job(env: dict, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """`ray job ...` from the checkout's root, as the README runs it."""
    done = subprocess.run(
        ["ray", "job", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert not check or done.returncode == 0, f"ray job {args[0]}: {done.stderr[-3000:]}"
    return done


def runtime_env(data_root, folder: Path) -> str:
    """jobs/runtime_env.yaml as a data engineer fills it in (the data root); its working_dir stays `.`: the
    checkout the command is run from."""
    env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    assert "pip" not in env and env["working_dir"] == "."  # nothing to install from a URL that may not exist
    env["env_vars"] = {"LACONIC_DATA": str(data_root), "AWS_DEFAULT_REGION": "us-east-1"}
    path = folder / "runtime_env.yaml"
    path.write_text(yaml.safe_dump(env))
    return str(path)


def status(env: dict, job: str) -> str:
    """`ray job status`'s answer: SUCCEEDED, STOPPED, FAILED, or the state it is still in."""
    said = ray_job(env, "status", "--log-style=record", "--log-color=false", job)
    said = said.stdout + said.stderr
    for state, words in {"SUCCEEDED": "succeeded", "STOPPED": "was stopped", "FAILED": "failed"}.items():
        if f"Job '{job}' {words}" in said:
            return state
    found = re.search(rf"Status for job '{job}': (\w+)", said)
    assert found, said
    return found.group(1)


def submit(
    env: dict, runtime: str, *command: str, wait: bool = True, timeout: float = 900
) -> tuple[str, str]:
    """`ray job submit` as the README runs it: it tails the job's log until the job ends and exits 1 if it
    failed. (Not `--no-wait` and a `ray job status` loop: each of those CLI calls costs ~2 s of CPU, a core of
    this 2-core machine taken from the job while it runs.) ``wait=False``: submitted with `--no-wait`."""
    job = f"laconic-{secrets.token_hex(4)}"
    args = ["submit", "--runtime-env", runtime, "--submission-id", job, *(() if wait else ("--no-wait",))]
    submitted = ray_job(env, *args, "--", *command, check=False, timeout=timeout)
    said = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, f"{command[1]}: {said[-3000:]}"
    if not wait:
        return job, ""
    assert f"Job '{job}' succeeded" in said, said[-3000:]
    return job, ray_job(env, "logs", job).stdout


def summary(logs: str) -> dict:
    return json.loads(logs.strip().splitlines()[-1])


def test_stages_as_ray_jobs(head, data_root, tmp_path):
    from tests.models import tiny_encoder

    env, work = head
    runtime = runtime_env(data_root, work)
    out = work / "pipeline"
    _, logs = submit(
        env, runtime, "python", "jobs/mine.py", "conf/mine.yaml", "dataset=cacm", f"output={out}/weak", "phase=1",
        "max_pairs=256",
    )  # fmt: skip
    assert summary(logs)["examples"] == storage.read_manifest(str(out / "weak")).total_rows > 0
    tiny_encoder().save_pretrained(str(out / "model"))
    _, logs = submit(
        env, runtime, "python", "jobs/encode.py", "conf/encode.yaml", f"model={out}/model", "corpus=cacm",
        f"output={out}/vectors", "shard_bytes=200000",
    )  # fmt: skip
    encoded = summary(logs)
    assert encoded["documents"] == storage.read_manifest(str(out / "vectors")).total_rows > 3000
    assert "encode:" in logs and "ETA" in logs  # the stage's progress, in the job's log
    _, logs = submit(
        env, runtime, "python", "jobs/index.py", "conf/index.yaml", f"input={out}/vectors", f"output={out}/index",
        "num_shards=2",
    )  # fmt: skip
    assert summary(logs)["docs"] == encoded["documents"]
    _, logs = submit(
        env, runtime, "python", "jobs/evaluate.py", "conf/eval.yaml", "dataset=cacm", f"index={out}/index",
        f"model={out}/model", f"output={out}/eval",
    )  # fmt: skip
    assert 0 <= summary(logs)["metrics"]["nDCG@10"] <= 1
    _, logs = submit(
        env, runtime, "python", "jobs/train.py", "conf/train/tiny.yaml", "phase=1", f"phase1.data={out}/weak",
        f"output={out}/run", "phase1.steps=2", "phase1.micro_batch_queries=8", "phase1.queries_per_step=16",
        "phase1.passage_max_length=48", "scaling.num_workers=1", "ray.num_cpus=null",
    )  # fmt: skip
    trained = summary(logs)
    assert trained["phases"][0]["steps"] == 2 and (out / "run" / "phase1" / "model" / "laconic.json").exists()


def test_an_encode_stopped_mid_way_completes_on_resubmission(head, data_root):
    from tests.models import tiny_encoder

    env, work = head
    runtime = runtime_env(data_root, work)
    out = work / "stopped"
    tiny_encoder().save_pretrained(str(out / "model"))
    command = [
        "python", "jobs/encode.py", "conf/encode.yaml", f"model={out}/model", "corpus=cranfield",
        f"output={out}/vectors", "shard_bytes=50000",
    ]  # fmt: skip
    job, _ = submit(env, runtime, *command, wait=False)
    parts = out / "vectors" / "parts"
    deadline = time.monotonic() + 600
    while not (parts.exists() and len(list(parts.glob("*.parquet"))) >= 2) and time.monotonic() < deadline:
        time.sleep(1)
    ray_job(env, "stop", job)  # waits for the job to stop
    assert status(env, job) == "STOPPED"
    assert not (out / "vectors" / "manifest.json").exists()  # unfinished, and it says so
    _, logs = submit(env, runtime, *command)
    resumed = summary(logs)
    assert resumed["shards_resumed"] >= 2  # the finished shards were kept, not redone
    ids, _, _ = sparse.read_sparse(str(out / "vectors"))
    lines = (Path(data_root) / "cranfield" / "corpus.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    corpus = [r["_id"] for r in rows if (r.get("title", "") + r["text"]).strip()]  # 2 have no text at all
    assert sorted(ids) == sorted(corpus)  # exactly one row per document
