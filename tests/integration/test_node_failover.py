"""Removing a node of a multi-node cluster reschedules its index shards (run in a separate process, because
a ray.cluster_utils.Cluster cannot share a process with the session's local cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_removed_node_reschedules_its_shard(tmp_path, data_root):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.node_failover", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["same_results"] and not report["partial"]
    assert report["shard0_before"] == report["victim"] != report["shard0_after"]
    assert report["restarts"][0] >= 1
