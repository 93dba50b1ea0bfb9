"""Training examples on storage: the contract between ``laconic mine`` and ``laconic train``.

Parquet parts under a folder with a ``manifest.json`` (kind ``examples``), one row per example::

    query_id      string         id of the query (weak pairs: a stable hash of the pair)
    query         string         query text (no prefix: the model's tokenizer adds "query: ")
    positive_id   string         id of the positive passage
    positive      string         positive passage text (title + body, no prefix)
    negative_ids  list<string>   hard negatives (phase 2: exactly ``group_size - 1``; phase 1: empty)
    negatives     list<string>   their texts, in the same order
    source        string         where the pair came from (weak:title_body, weak:first_sentence, pairs:<file>,
                                 bm25:<dataset>/<split>, model:<checkpoint>)

Every example is validated before it is written: non-empty query and positive, as many negative texts as ids,
no negative equal to the positive, and (when known) the same number of negatives in every row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from laconic_ray import storage
from laconic_ray.storage import FileEntry, Manifest, StorageOptions

EXAMPLES_KIND = "examples"
SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("query", pa.string()),
        ("positive_id", pa.string()),
        ("positive", pa.string()),
        ("negative_ids", pa.list_(pa.string())),
        ("negatives", pa.list_(pa.string())),
        ("source", pa.string()),
    ]
)


class ExampleError(ValueError):
    """An invalid training example; the message names the query id and what is wrong."""


@dataclasses.dataclass
class Example:
    query_id: str
    query: str
    positive_id: str
    positive: str
    negative_ids: list[str] = dataclasses.field(default_factory=list)
    negatives: list[str] = dataclasses.field(default_factory=list)
    source: str = ""

    def validate(self, num_negatives: int | None = None) -> None:
        where = f"example for query {self.query_id!r}"
        if not self.query.strip():
            raise ExampleError(f"{where}: empty query")
        if not self.positive.strip() or not self.positive_id:
            raise ExampleError(f"{where}: empty positive")
        if len(self.negative_ids) != len(self.negatives):
            raise ExampleError(
                f"{where}: {len(self.negative_ids)} negative ids but {len(self.negatives)} texts"
            )
        if num_negatives is not None and len(self.negative_ids) != num_negatives:
            raise ExampleError(f"{where}: {len(self.negative_ids)} negatives, expected {num_negatives}")
        if self.positive_id in self.negative_ids:
            raise ExampleError(f"{where}: the positive {self.positive_id!r} is also a negative")
        if len(set(self.negative_ids)) != len(self.negative_ids):
            raise ExampleError(f"{where}: repeated negative ids")


class ExampleWriter:
    """Streams examples into Parquet parts of ``rows_per_part`` rows; ``close()`` writes the manifest last."""

    def __init__(
        self,
        uri: str,
        *,
        num_negatives: int | None = None,
        rows_per_part: int = 50_000,
        metadata: dict[str, Any] | None = None,
        options: StorageOptions | None = None,
    ) -> None:
        self.uri, self.options = uri, options
        self.num_negatives = num_negatives
        self.rows_per_part = rows_per_part
        self.metadata = dict(metadata or {})
        self.buffer: list[Example] = []
        self.entries: list[FileEntry] = []
        self.count = 0
        storage.remove(
            storage.join(uri, storage.MANIFEST_NAME), options
        )  # never looks complete while writing
        storage.makedirs(uri, options)

    def add(self, example: Example) -> None:
        example.validate(self.num_negatives)
        self.buffer.append(example)
        self.count += 1
        if len(self.buffer) >= self.rows_per_part:
            self._flush()

    def _flush(self) -> None:
        if not self.buffer and self.entries:
            return
        table = pa.Table.from_pylist([dataclasses.asdict(e) for e in self.buffer], schema=SCHEMA)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        name = f"part-{len(self.entries):05d}.parquet"
        self.entries.append(
            storage.write_file(self.uri, name, sink.getvalue().to_pybytes(), table.num_rows, self.options)
        )
        self.buffer = []

    def close(self) -> Manifest:
        self._flush()
        meta = {**self.metadata, "examples": self.count, "num_negatives": self.num_negatives}
        manifest = Manifest(kind=EXAMPLES_KIND, files=self.entries, metadata=meta)
        storage.write_manifest(self.uri, manifest, self.options)
        return manifest


def write_examples(uri: str, examples: Iterable[Example], **kwargs: Any) -> Manifest:
    writer = ExampleWriter(uri, **kwargs)
    for example in examples:
        writer.add(example)
    return writer.close()


def example_files(uri: str, options: StorageOptions | None = None) -> tuple[Manifest, list[str]]:
    """The manifest and the part URIs it lists (what Ray Data reads in training)."""
    manifest = storage.read_manifest(uri, options, kind=EXAMPLES_KIND)
    return manifest, [storage.join(uri, f.path) for f in manifest.files]


def read_examples(uri: str, options: StorageOptions | None = None) -> Iterator[Example]:
    """Every example of a finished examples folder, in part order."""
    manifest, files = example_files(uri, options)
    for entry, file_uri in zip(manifest.files, files, strict=True):
        data = storage.read_bytes(file_uri, options)
        storage.check_bytes(file_uri, data, entry)
        for row in pq.read_table(pa.BufferReader(data)).to_pylist():
            yield Example(**row)
