"""jobs/*.py are wired to their stages: a bad key is a config error (exit 2) naming the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

JOBS = {
    "train": "conf/train/tiny.yaml",
    "mine": "conf/mine.yaml",
    "encode": "conf/encode.yaml",
    "index": "conf/index.yaml",
    "serve": "conf/serve.yaml",
    "evaluate": "conf/eval.yaml",
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_job_entry_point_reaches_its_stage(job):
    result = subprocess.run(
        [sys.executable, f"jobs/{job}.py", JOBS[job], "no_such_key=1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "unknown key 'no_such_key'" in result.stderr
