"""Shared set-up for benchmark scripts: import paths and the data locations the tests use."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = next(
    (p for p in (REPO.parent / "shared", Path("/work/shared")) if p.is_dir()), REPO.parent / "shared"
)


def setup() -> None:
    """Make ``laconic_ray`` and ``tests`` importable and point at the shared collections and tokenizers."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("LACONIC_DATA", str(SHARED / "datasets"))
    os.environ.setdefault("LACONIC_TOKENIZERS", str(SHARED / "tokenizers"))
