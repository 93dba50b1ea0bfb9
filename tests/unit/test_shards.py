"""Corpus shards (laconic_ray/data/shards.py): rejected lines are numbered right, in about one pass per file."""

from __future__ import annotations

import json

from laconic_ray.data import shards as shards_module
from laconic_ray.data.shards import plan_shards, read_shard


def test_rejected_lines_are_numbered_without_rereading_the_file(tmp_path, monkeypatch):
    path = tmp_path / "corpus.jsonl"
    lines, bad = [], []
    for i in range(6000):
        if i % 7 == 3:
            lines.append("{not json")
            bad.append(i + 1)
        else:
            lines.append(json.dumps({"_id": f"d{i}", "text": f"text number {i} " * 3}))
    path.write_text("\n".join(lines) + "\n")
    size = path.stat().st_size
    monkeypatch.setattr(shards_module, "_LINE_MARKS", {})
    read = []
    real_number = shards_module._line_number

    def counting(uri, offset, options):  # bytes scanned to number lines = distance from the nearest mark
        marks = next(iter(shards_module._LINE_MARKS.values()), {0: 0})  # this file's known points
        read.append(offset - max(o for o in marks if o <= offset))
        return real_number(uri, offset, options)

    monkeypatch.setattr(shards_module, "_line_number", counting)
    plan = plan_shards(str(path), shard_bytes=4096)
    assert len(plan) > 50
    found = []
    for shard in plan:
        found += [r["line"] for r in read_shard(shard, on_bad_row="reject").rejects]
    assert found == bad
    assert len(read) == len(plan)  # once per shard (at its first reject), not once per bad line
    assert sum(read) <= size  # and each time from where the last count stopped: one pass over the file
