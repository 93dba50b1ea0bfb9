"""Streaming readers for BEIR-format collections, local or on object storage.

Layout (https://github.com/beir-cellar/beir)::

    <root>/corpus.jsonl[.gz] | corpus.parquet     {"_id", "title", "text"}
    <root>/queries.jsonl[.gz] | queries.parquet   {"_id", "text"}
    <root>/qrels/<split>.tsv                      query-id <tab> corpus-id <tab> score (header line)

Collections are large (hundreds of millions of passages), so corpus and queries are generators; only qrels,
which are small, are read whole. A malformed record is an error naming the file and line, or, with
``on_error="skip"``, a line in a rejects file with the reason: never silently lost.

The data root is ``LACONIC_DATA`` unless a config names one (our machines: ``../shared/datasets``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import os
from collections.abc import Iterator
from typing import Any, Literal

from laconic_ray import storage
from laconic_ray.storage import StorageOptions

DATA_ENV = "LACONIC_DATA"
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
OnError = Literal["raise", "skip"]


class DataFormatError(ValueError):
    """A malformed record; the message names the file and line (or Parquet row)."""


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    text: str
    title: str = ""

    def full_text(self) -> str:
        """Title and body joined the way BEIR/SPLADE models see a passage."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclasses.dataclass(frozen=True)
class Query:
    id: str
    text: str


@dataclasses.dataclass
class Rejects:
    """Collects records that ``on_error="skip"`` set aside, and writes them as JSON lines."""

    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, source: str, line: int, reason: str, raw: str) -> None:
        self.records.append({"file": source, "line": line, "reason": reason, "raw": raw[:2000]})

    def __len__(self) -> int:
        return len(self.records)

    def write(self, uri: str, options: StorageOptions | None = None) -> None:
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records)
        storage.write_bytes(uri, body.encode(), options)


def data_root(configured: str | None = None) -> str:
    """The folder holding collections: the configured value, else ``$LACONIC_DATA``."""
    root = configured or os.environ.get(DATA_ENV)
    if not root:
        raise FileNotFoundError(
            f"no data root: set {DATA_ENV} to the folder holding your BEIR collections (each a folder with "
            "corpus.jsonl, queries.jsonl, qrels/), or give dataset as a path or s3:// URI"
        )
    return root


def resolve_dataset(name_or_uri: str, root: str | None = None) -> str:
    """A dataset given as a bare name (``scifact``) lives under the data root; paths and URIs pass through."""
    if "://" in name_or_uri or os.sep in name_or_uri or os.path.exists(name_or_uri):
        return name_or_uri
    return storage.join(data_root(root), name_or_uri)


def corpus_of(uri: str, options: StorageOptions | None = None) -> str:
    """What to encode for ``corpus=uri``: a BEIR collection's folder (``corpus.*`` beside ``queries.jsonl`` and
    ``qrels/``) stands for its corpus file, not every JSONL in it; any other folder or file is the corpus."""
    fs, path = storage.filesystem(uri, options)
    if fs.isdir(path):
        with contextlib.suppress(FileNotFoundError):
            return _find(uri, "corpus", options)
    return uri


def _open_text_lines(uri: str, options: StorageOptions | None) -> Iterator[tuple[int, bytes]]:
    """``(line number, raw bytes)`` of a text file, gunzipped when it ends in ``.gz``."""
    fs, path = storage.filesystem(uri, options)
    try:
        raw = fs.open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file") from None
    number = 0
    with raw:
        stream = gzip.GzipFile(fileobj=raw) if uri.endswith(".gz") else raw
        try:
            for number, line in enumerate(stream, 1):
                yield number, line
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise DataFormatError(f"{uri}: unreadable after line {number} ({e})") from None


def iter_jsonl(
    uri: str,
    *,
    options: StorageOptions | None = None,
    on_error: OnError = "raise",
    rejects: Rejects | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for every JSON line; blank lines are skipped.

    Invalid UTF-8, invalid JSON and non-object lines raise :class:`DataFormatError` naming file and line,
    or go to ``rejects`` when ``on_error="skip"``.
    """
    for number, line in _open_text_lines(uri, options):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            _reject(
                uri,
                number,
                f"invalid UTF-8 ({e.reason} at byte {e.start})",
                line.decode("utf-8", "replace"),
                on_error,
                rejects,
            )
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            _reject(uri, number, f"invalid JSON ({e.msg} at column {e.colno})", text, on_error, rejects)
            continue
        if not isinstance(obj, dict):
            _reject(uri, number, f"expected a JSON object, got {type(obj).__name__}", text, on_error, rejects)
            continue
        yield number, obj


def _reject(
    source: str, line: int, reason: str, raw: str, on_error: OnError, rejects: Rejects | None
) -> None:
    if on_error == "raise":
        raise DataFormatError(f"{source}:{line}: {reason}")
    if on_error != "skip":
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if rejects is not None:
        rejects.add(source, line, reason, raw)


def iter_parquet_rows(
    uri: str, options: StorageOptions | None = None, batch_size: int = 8192
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(row number starting at 1, row dict)`` from a Parquet file, batch by batch."""
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri, options)
    with fs.open(path, "rb") as f:
        number = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size):
            for row in batch.to_pylist():
                number += 1
                yield number, row


def _find(root: str, stem: str, options: StorageOptions | None) -> str:
    for suffix in (".jsonl", ".jsonl.gz", ".parquet"):
        uri = storage.join(root, stem + suffix)
        if storage.exists(uri, options):
            return uri
    raise FileNotFoundError(f"{root}: no {stem}.jsonl, {stem}.jsonl.gz or {stem}.parquet")


def iter_records(
    uri: str,
    *,
    options: StorageOptions | None = None,
    on_error: OnError = "raise",
    rejects: Rejects | None = None,
) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(file, line, record)`` from a JSONL(.gz) or Parquet file, or from every such file of a folder
    (sorted by name, so the order is reproducible)."""
    fs, path = storage.filesystem(uri, options)
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.endswith((".jsonl", ".jsonl.gz", ".parquet")))
        uris = [
            storage.join(uri, os.path.relpath(p, path) if not storage.is_remote(uri) else p[len(path) + 1 :])
            for p in files
        ]
        if not uris:
            raise FileNotFoundError(f"{uri}: folder holds no .jsonl, .jsonl.gz or .parquet files")
    else:
        uris = [uri]
    for file_uri in uris:
        if file_uri.endswith(".parquet"):
            rows = iter_parquet_rows(file_uri, options)
        else:
            rows = iter_jsonl(file_uri, options=options, on_error=on_error, rejects=rejects)
        for number, record in rows:
            yield file_uri, number, record


def _field(record: dict[str, Any], key: str, *, required: bool) -> str | None:
    value = record.get(key)
    if value is None:
        if required:
            raise KeyError(f"missing field {key!r}")
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and key == "_id":
        return str(value)  # some collections store numeric ids
    if not isinstance(value, str):
        raise TypeError(f"field {key!r} must be a string, got {type(value).__name__}")
    return value


def _parse(
    record: dict[str, Any],
    source: str,
    line: int,
    fields: tuple[str, ...],
    optional: tuple[str, ...],
    on_error: OnError,
    rejects: Rejects | None,
) -> dict[str, str] | None:
    try:
        out = {k: _field(record, k, required=True) for k in fields}
        out.update({k: _field(record, k, required=False) or "" for k in optional})
    except (KeyError, TypeError) as e:
        _reject(source, line, str(e).strip('"'), json.dumps(record, ensure_ascii=False), on_error, rejects)
        return None
    if not out["_id"]:
        _reject(source, line, "empty '_id'", json.dumps(record, ensure_ascii=False), on_error, rejects)
        return None
    return out


def iter_documents(
    uri: str,
    *,
    options: StorageOptions | None = None,
    on_error: OnError = "raise",
    rejects: Rejects | None = None,
) -> Iterator[Document]:
    """Documents (``_id``, ``text``, optional ``title``) from a corpus file or folder (a collection's folder:
    its corpus file)."""
    uri = corpus_of(uri, options)
    for source, line, record in iter_records(uri, options=options, on_error=on_error, rejects=rejects):
        row = _parse(record, source, line, ("_id", "text"), ("title",), on_error, rejects)
        if row is not None:
            yield Document(id=row["_id"], text=row["text"], title=row["title"])


def iter_queries(
    uri: str,
    *,
    options: StorageOptions | None = None,
    on_error: OnError = "raise",
    rejects: Rejects | None = None,
) -> Iterator[Query]:
    for source, line, record in iter_records(uri, options=options, on_error=on_error, rejects=rejects):
        row = _parse(record, source, line, ("_id", "text"), (), on_error, rejects)
        if row is not None:
            yield Query(id=row["_id"], text=row["text"])


def read_qrels(uri: str, *, options: StorageOptions | None = None) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from a BEIR qrels TSV (header optional) or a TREC qrels file
    (``qid iter docid rel``, whitespace separated)."""
    qrels: dict[str, dict[str, int]] = {}
    for number, raw in _open_text_lines(uri, options):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataFormatError(f"{uri}:{number}: invalid UTF-8") from None
        if not line:
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) == 4:  # TREC: qid Q0 docid rel
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise DataFormatError(
                f"{uri}:{number}: expected 'query-id<TAB>corpus-id<TAB>score', got {line!r}"
            )
        qid, did, score = parts
        try:
            rel = int(score)
        except ValueError:
            if number == 1:  # header line
                continue
            raise DataFormatError(f"{uri}:{number}: score {score!r} is not an integer") from None
        qrels.setdefault(qid, {})[did] = rel
    return qrels


class BeirDataset:
    """One BEIR-format collection at ``root`` (a path or URI, or a bare name under the data root)."""

    def __init__(
        self,
        root: str,
        *,
        options: StorageOptions | None = None,
        on_error: OnError = "raise",
        data_root_dir: str | None = None,
    ) -> None:
        self.root = resolve_dataset(root, data_root_dir)
        self.options = options
        self.on_error = on_error
        self.rejects = Rejects()
        if not storage.exists(self.root, options):
            where = (
                ""
                if data_root_dir or storage.is_remote(self.root) or os.path.isabs(root)
                else (f" (a bare name is looked up under ${DATA_ENV})")
            )
            raise FileNotFoundError(f"dataset: {self.root}: not found{where}")

    @property
    def name(self) -> str:
        return os.path.basename(self.root.rstrip("/"))

    def corpus_uri(self) -> str:
        return _find(self.root, "corpus", self.options)

    def queries_uri(self) -> str:
        return _find(self.root, "queries", self.options)

    def qrels_uri(self, split: str) -> str:
        return storage.join(self.root, "qrels", f"{split}.tsv")

    def splits(self) -> list[str]:
        fs, path = storage.filesystem(storage.join(self.root, "qrels"), self.options)
        if not fs.exists(path):
            return []
        return sorted(
            os.path.basename(p)[: -len(".tsv")] for p in fs.ls(path, detail=False) if p.endswith(".tsv")
        )

    def corpus(self) -> Iterator[Document]:
        return iter_documents(
            self.corpus_uri(), options=self.options, on_error=self.on_error, rejects=self.rejects
        )

    def queries(self, split: str | None = None) -> Iterator[Query]:
        """All queries, or only those judged in ``split``'s qrels (in file order)."""
        wanted = set(self.qrels(split)) if split else None
        for q in iter_queries(
            self.queries_uri(), options=self.options, on_error=self.on_error, rejects=self.rejects
        ):
            if wanted is None or q.id in wanted:
                yield q

    def qrels(self, split: str) -> dict[str, dict[str, int]]:
        uri = self.qrels_uri(split)
        if not storage.exists(uri, self.options):
            raise FileNotFoundError(f"{uri}: no qrels for split {split!r} (have: {self.splits()})")
        return read_qrels(uri, options=self.options)


def download_beir(name: str, root: str, url: str = BEIR_URL) -> str:
    """Download and unpack a public BEIR collection into ``root/name`` (needs internet); returns the folder.

    The archive holds ``<name>/corpus.jsonl``, ``queries.jsonl`` and ``qrels/*.tsv``. It is unpacked into a
    temporary folder beside the target and renamed into place, so an interrupted download leaves nothing that
    looks like a collection.
    """
    import shutil
    import tempfile
    import urllib.request
    import zipfile

    target = os.path.join(root, name)
    if os.path.isdir(target):
        return target
    os.makedirs(root, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        archive = os.path.join(tmp, f"{name}.zip")
        try:
            with (
                urllib.request.urlopen(url.format(name=name), timeout=120) as response,
                open(archive, "wb") as f,
            ):
                shutil.copyfileobj(response, f)
        except OSError as e:  # URLError, timeouts, resets: say what was tried and what to set instead
            raise FileNotFoundError(
                f"collection {name!r}: not under {root}, and downloading {url.format(name=name)} failed ({e}); "
                f"set LACONIC_DATA (or data_root=) to the folder holding {name}/, or give its path"
            ) from e
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp)
        os.replace(os.path.join(tmp, name), target)
    return target
