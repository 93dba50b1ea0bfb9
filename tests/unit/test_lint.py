"""ruff (lint + format) is part of the suite, so that CI keeps the code base clean."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def run_ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_check_is_clean():
    result = run_ruff("check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = run_ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr
