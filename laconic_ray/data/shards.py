"""Cut a corpus into deterministic shards, and read one shard with every bad row accounted for.

A shard is the unit of distributed work, of output (one Parquet part per shard) and of resumption (a rerun
skips shards already done). Shards must therefore be the same on every run over the same input:

* a plain ``.jsonl`` file is cut into byte ranges of ``shard_bytes``; a range owns every line that *starts*
  inside it (a reader that starts mid-line skips to the next newline), so ranges never split or share a line;
* a ``.jsonl.gz`` file is one shard (gzip cannot be entered mid-stream);
* a Parquet file gives one shard per row group.

Files are taken in name order. The plan records each file's size; a rerun against a changed corpus is refused.

Bad rows (invalid UTF-8 or JSON, missing or non-string fields, empty text, an id repeated within the shard)
never vanish: ``read_shard`` returns them with file, line (or Parquet row) and reason, and the caller either
writes them to a rejects file or raises.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from typing import Any

from laconic_ray import storage
from laconic_ray.data.beir import DataFormatError
from laconic_ray.storage import StorageOptions

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


@dataclasses.dataclass(frozen=True)
class Shard:
    shard: int
    uri: str
    format: str  # jsonl | jsonl.gz | parquet
    start: int  # jsonl: first byte; parquet: row group; gz: 0
    end: int  # jsonl: end byte (exclusive); parquet: row group + 1; gz: file size
    first_row: int = 0  # parquet: rows of the file before this row group (for row numbers in messages)


def _files(uri: str, options: StorageOptions | None) -> list[tuple[str, int]]:
    fs, path = storage.filesystem(uri, options)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: corpus not found")
    if fs.isdir(path):
        found = sorted(p for p in fs.find(path) if p.endswith(SUFFIXES))
        if not found:
            raise FileNotFoundError(f"{uri}: folder holds no {', '.join(SUFFIXES)} files")
        rel = [p[len(path.rstrip("/")) + 1 :] for p in found]
        return [(storage.join(uri, r), int(fs.size(p))) for r, p in zip(rel, found, strict=True)]
    if not uri.endswith(SUFFIXES):
        raise ValueError(f"{uri}: corpus files must end in {', '.join(SUFFIXES)}")
    return [(uri, int(fs.size(path)))]


def plan_shards(uri: str, shard_bytes: int, options: StorageOptions | None = None) -> list[Shard]:
    """The deterministic shard list of a corpus file or folder."""
    import pyarrow.parquet as pq

    shards: list[Shard] = []
    for file_uri, size in _files(uri, options):
        if file_uri.endswith(".parquet"):
            fs, path = storage.filesystem(file_uri, options)
            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            first = 0
            for group in range(meta.num_row_groups):
                shards.append(Shard(len(shards), file_uri, "parquet", group, group + 1, first))
                first += meta.row_group(group).num_rows
        elif file_uri.endswith(".gz"):
            shards.append(Shard(len(shards), file_uri, "jsonl.gz", 0, size))
        else:
            for start in range(0, max(size, 1), shard_bytes):
                shards.append(Shard(len(shards), file_uri, "jsonl", start, min(size, start + shard_bytes)))
    return shards


def plan_fingerprint(shards: list[Shard], options: StorageOptions | None = None) -> list[dict[str, Any]]:
    """What a rerun must find unchanged: every file with its size."""
    seen: dict[str, int] = {}
    for s in shards:
        if s.uri not in seen:
            fs, path = storage.filesystem(s.uri, options)
            seen[s.uri] = int(fs.size(path))
    return [{"uri": u, "bytes": b} for u, b in seen.items()]


@dataclasses.dataclass
class ShardRows:
    """The good rows of a shard (in file order) and the rejected ones with reasons."""

    ids: list[str]
    texts: list[str]
    rejects: list[dict[str, Any]]


# Known (byte offset -> lines before it) points per file version, so that numbering a rejected line counts
# newlines from the nearest known point, not from byte 0: about one pass over a file in all, however many of
# its shards hold bad lines (within a shard, lines are numbered as they are read).
_LINE_MARKS: dict[tuple, dict[int, int]] = {}


def _line_number(uri: str, offset: int, options: StorageOptions | None) -> int:
    """1-based line number of the line starting at byte ``offset`` (computed only when reporting)."""
    fs, path = storage.filesystem(uri, options)
    info = fs.info(path)
    version = (uri, info.get("size"), info.get("mtime") or info.get("ETag") or info.get("LastModified"))
    marks = _LINE_MARKS.setdefault(version, {0: 0})
    start = max(o for o in marks if o <= offset)
    count = marks[start]
    with fs.open(path, "rb") as f:
        f.seek(start)
        remaining = offset - start
        while remaining > 0:
            block = f.read(min(remaining, 1 << 22))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    marks[offset] = count
    return count + 1


def _iter_jsonl_range(shard: Shard, options: StorageOptions | None):
    """``(byte offset or line number, raw line)`` of the lines a shard owns."""
    fs, path = storage.filesystem(shard.uri, options)
    with fs.open(path, "rb") as raw:
        if shard.format == "jsonl.gz":
            with gzip.GzipFile(fileobj=raw) as stream:
                try:
                    for number, line in enumerate(stream, 1):
                        yield number, line
                except (OSError, EOFError) as e:
                    raise DataFormatError(f"{shard.uri}: unreadable gzip stream ({e})") from None
            return
        position = shard.start
        if position > 0:
            raw.seek(position - 1)
            position += len(raw.readline()) - 1  # skip the line that started before this range
        while position < shard.end:
            line = raw.readline()
            if not line:
                break
            yield position, line
            position += len(line)


def _document(record: Any, kind: str) -> tuple[str, str]:
    """``(id, text)`` of a record, or raise ValueError with the reason."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    doc_id = record.get("_id", record.get("id"))
    if doc_id is None:
        raise ValueError("missing field '_id'")
    if isinstance(doc_id, int | float) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise ValueError("'_id' must be a non-empty string")
    if "text" not in record:
        raise ValueError("missing field 'text'")
    text, title = record.get("text"), record.get("title") or ""
    if not isinstance(text, str):
        raise ValueError(f"field 'text' must be a string, got {type(text).__name__}")
    if not isinstance(title, str):
        raise ValueError(f"field 'title' must be a string, got {type(title).__name__}")
    full = f"{title} {text}".strip() if (title and kind == "passage") else text.strip()
    if not full:
        raise ValueError("empty text")
    return doc_id, full


def read_shard(
    shard: Shard, *, kind: str = "passage", on_bad_row: str = "reject", options: StorageOptions | None = None
) -> ShardRows:
    """Read a shard's documents; ``on_bad_row="raise"`` raises :class:`DataFormatError` naming file and line."""
    rows = ShardRows([], [], [])
    seen: dict[str, int] = {}

    first_line: list[int] = []  # the range's first line number, found at its first reject

    def reject(where: int, reason: str, raw: str, byte_offset: bool) -> None:
        line = where
        if byte_offset:  # ``where`` is the line's ordinal in this range: number it from the range's start
            if not first_line:
                first_line.append(_line_number(shard.uri, range_start[0], options))
            line = first_line[0] + where
        label = "row" if shard.format == "parquet" else "line"
        if on_bad_row == "raise":
            raise DataFormatError(
                f"{shard.uri}:{line}: {reason}"
                if label == "line"
                else f"{shard.uri}: {label} {line}: {reason}"
            )
        rows.rejects.append({"file": shard.uri, label: line, "reason": reason, "raw": raw[:2000]})

    def accept(where: int, record: Any, raw: str, byte_offset: bool) -> None:
        try:
            doc_id, text = _document(record, kind)
        except ValueError as e:
            reject(where, str(e), raw, byte_offset)
            return
        if doc_id in seen:
            reject(where, f"duplicate id {doc_id!r} (first seen earlier in the same shard)", raw, byte_offset)
            return
        seen[doc_id] = len(rows.ids)
        rows.ids.append(doc_id)
        rows.texts.append(text)

    if shard.format == "parquet":
        import pyarrow.parquet as pq

        fs, path = storage.filesystem(shard.uri, options)
        with fs.open(path, "rb") as f:
            table = pq.ParquetFile(f).read_row_group(shard.start)
        for i, record in enumerate(table.to_pylist()):
            accept(
                shard.first_row + i + 1, record, json.dumps(record, default=str, ensure_ascii=False), False
            )
        return rows

    byte_offset = shard.format == "jsonl"
    range_start: list[int] = []
    for ordinal, (position, line) in enumerate(_iter_jsonl_range(shard, options)):
        if byte_offset and not range_start:
            range_start.append(position)
        where = ordinal if byte_offset else position
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            reject(
                where,
                f"invalid UTF-8 ({e.reason} at byte {e.start})",
                line.decode("utf-8", "replace"),
                byte_offset,
            )
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            reject(where, f"invalid JSON ({e.msg} at column {e.colno})", text, byte_offset)
            continue
        accept(where, record, text.rstrip("\n"), byte_offset)
    return rows


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}"


def describe(shard: Shard) -> str:
    where = os.path.basename(shard.uri)
    return f"{where}[{shard.start}:{shard.end}]" if shard.format != "jsonl.gz" else where
