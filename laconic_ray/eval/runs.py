"""TREC run files: ``qid Q0 docid rank score tag``, one line per retrieved document, best first."""

from __future__ import annotations

from collections.abc import Mapping

from laconic_ray import storage
from laconic_ray.storage import StorageOptions

Run = dict[str, dict[str, float]]  # qid -> {docid: score}


class RunFormatError(ValueError):
    """A malformed run file; the message names file and line."""


def write_run(
    uri: str, run: Mapping[str, Mapping[str, float]], tag: str, options: StorageOptions | None = None
) -> None:
    lines = []
    for qid in sorted(run):
        ranked = sorted(run[qid].items(), key=lambda item: (-item[1], item[0]))
        lines.extend(
            f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n" for rank, (doc, score) in enumerate(ranked, 1)
        )
    storage.write_bytes(uri, "".join(lines).encode(), options)


def read_run(uri: str, options: StorageOptions | None = None) -> Run:
    run: Run = {}
    for number, line in enumerate(storage.read_bytes(uri, options).decode().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 6:
            raise RunFormatError(f"{uri}:{number}: expected 'qid Q0 docid rank score tag', got {line!r}")
        try:
            score = float(parts[4])
        except ValueError:
            raise RunFormatError(f"{uri}:{number}: score {parts[4]!r} is not a number") from None
        run.setdefault(parts[0], {})[parts[2]] = score
    return run
