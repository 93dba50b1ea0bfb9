"""URIs to filesystems, atomic writes and manifests: the only way laconic_ray touches storage.

Every stage reads and writes through a URI: a plain path or ``file://`` (local disk) or ``s3://`` (any
S3-compatible store through s3fs). The endpoint of an S3-compatible store comes from
``StorageOptions.endpoint_url`` or, failing that, the ``AWS_ENDPOINT_URL`` environment variable; credentials
come from the usual AWS chain and never from configs.

Why manifests: object stores have no rename and jobs crash. A dataset folder is only *complete* when its
``manifest.json`` exists; the manifest is written last and lists every file with its row count, size and
checksum. Readers trust only what the manifest lists, so a half-written folder never looks finished, and a
rerun can see exactly which parts are already done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


class StorageError(RuntimeError):
    """A storage location is missing, incomplete or corrupt; the message names the file."""


@dataclasses.dataclass(frozen=True)
class StorageOptions:
    """How to reach object storage. Plain values only, so that it crosses process boundaries (Ray tasks)."""

    endpoint_url: str | None = None
    region: str | None = None
    anon: bool = False

    def s3_kwargs(self) -> dict[str, Any]:
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        client_kwargs: dict[str, Any] = {}
        if self.region:
            client_kwargs["region_name"] = self.region
        # No listings cache: other processes (Ray workers) write the folders we poll, e.g. for a manifest.
        kwargs: dict[str, Any] = {
            "anon": self.anon,
            "client_kwargs": client_kwargs,
            "use_listings_cache": False,
        }
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        return kwargs


DEFAULT_OPTIONS = StorageOptions()


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def filesystem(uri: str, options: StorageOptions | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Resolve ``uri`` to ``(filesystem, path)``; the path is what that filesystem expects (no scheme)."""
    uri = os.fspath(uri)
    options = options or DEFAULT_OPTIONS
    if uri.startswith("s3://"):
        import s3fs

        # s3fs caches instances by arguments, so repeated calls are cheap and share connections.
        return s3fs.S3FileSystem(**options.s3_kwargs()), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(uri))


def pyarrow_filesystem(uri: str, options: StorageOptions | None = None):
    """``(pyarrow.fs.FileSystem, path)`` for ``uri``; what Ray Data and Ray Train's ``storage_filesystem`` take.

    S3 is wrapped from s3fs (not pyarrow's own S3 client) so that endpoint and credentials behave exactly as
    everywhere else in laconic_ray.
    """
    import pyarrow.fs as pafs

    fs, path = filesystem(uri, options)
    if not is_remote(uri):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI without mangling ``s3://``."""
    uri = os.fspath(uri)
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def exists(uri: str, options: StorageOptions | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return fs.exists(path)


def makedirs(uri: str, options: StorageOptions | None = None) -> None:
    fs, path = filesystem(uri, options)
    if not is_remote(uri):
        fs.makedirs(path, exist_ok=True)
    # Object stores have no directories; prefixes come into being with their first object.


def remove(uri: str, options: StorageOptions | None = None, recursive: bool = False) -> None:
    fs, path = filesystem(uri, options)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


@contextlib.contextmanager
def open_atomic(uri: str, mode: str = "wb", options: StorageOptions | None = None) -> Iterator[Any]:
    """Open ``uri`` for writing so that readers see either the old file or the whole new one, never a part.

    Local: write a hidden temp file beside the target, fsync, then ``os.replace``. S3: a PUT is atomic by
    itself (the object appears only when the upload completes), so the file is written in place.
    If the body raises, nothing is left behind.
    """
    if mode != "wb":
        raise ValueError(f"open_atomic writes bytes (mode 'wb'), got {mode!r}")
    fs, path = filesystem(uri, options)
    if is_remote(uri):
        f = fs.open(path, mode)
        try:
            yield f
        except BaseException:
            # Closing would upload what was buffered; discard aborts the (multipart) upload instead.
            f.discard()
            f.closed = True  # so that garbage collection does not try to flush the discarded buffer
            raise
        f.close()
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(uri: str, data: bytes, options: StorageOptions | None = None) -> None:
    with open_atomic(uri, "wb", options) as f:
        f.write(data)


def read_bytes(uri: str, options: StorageOptions | None = None) -> bytes:
    fs, path = filesystem(uri, options)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise StorageError(f"{uri}: no such file") from None


def upload_dir(
    local_dir: str, uri: str, options: StorageOptions | None = None, last: str | None = None
) -> None:
    """Copy a local folder to ``uri`` (any filesystem); the file named ``last`` is copied after all others, so
    that its presence means the folder is complete (the same rule as manifests)."""
    files = sorted(p.relative_to(local_dir).as_posix() for p in Path(local_dir).rglob("*") if p.is_file())
    if last in files:
        files.remove(last)
        files.append(last)
    for rel in files:
        with (
            open(os.path.join(local_dir, rel), "rb") as src,
            open_atomic(join(uri, rel), "wb", options) as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 22)


def cache_root() -> Path:
    """Where downloads are cached on this node: ``$LACONIC_CACHE`` or ``~/.cache/laconic_ray``."""
    return Path(os.environ.get("LACONIC_CACHE", Path.home() / ".cache" / "laconic_ray"))


COMPLETE_MARKER = ".laconic-complete"  # written last into a cached copy: its presence means complete
KEEP_VERSIONS = 2  # cached versions of one URI kept on a node (the newest; older ones are removed)


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process on this node (``flock`` on ``path``)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remote_fingerprint(uri: str, options: StorageOptions | None = None) -> str:
    """A digest of what a remote folder holds now: every object's path, size and ETag (one listing). It
    changes when any file is added, removed or rewritten, so a cache keyed by it is never stale."""
    fs, path = filesystem(uri, options)
    listing = fs.find(path, detail=True)
    if not listing:
        raise StorageError(f"{uri}: not found (no objects under this prefix)")
    h = hashlib.sha256()
    for key in sorted(listing):
        info = listing[key]
        tag = info.get("ETag") or info.get("LastModified") or info.get("mtime") or ""
        h.update(f"{key[len(path) :]}\0{info.get('size')}\0{tag}\n".encode())
    return h.hexdigest()


def localize(uri: str, options: StorageOptions | None = None) -> str:
    """A local path holding the folder at ``uri``: the path itself when local, else a cached download.

    A cached copy is keyed by the URI *and* the remote folder's current fingerprint (object names, sizes,
    ETags): a folder rewritten in place (``laconic index force=true`` to the same URI, a re-exported model) is
    downloaded anew instead of served stale. Copies appear atomically (downloaded beside, marked complete,
    renamed), and one process per node downloads a given version while the others wait for it (a node lock),
    so eight workers loading one model fetch it once and never delete what another is reading.
    """
    if not is_remote(uri):
        return filesystem(uri, options)[1]
    fingerprint = remote_fingerprint(uri, options)
    root = cache_root() / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:24]
    target = root / fingerprint[:24]
    if (target / COMPLETE_MARKER).exists():
        return str(target)
    fs, path = filesystem(uri, options)
    with _node_lock(root / ".lock"):
        if (target / COMPLETE_MARKER).exists():  # another process fetched it while we waited
            return str(target)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy nobody can be using
        tmp = root / f".{uuid.uuid4().hex}.tmp"
        try:
            fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
            (tmp / COMPLETE_MARKER).write_text(json.dumps({"uri": uri, "fingerprint": fingerprint}))
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        versions = sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for old in versions[KEEP_VERSIONS:]:
            shutil.rmtree(old, ignore_errors=True)
    return str(target)


def evict(uri: str, local: str) -> None:
    """Drop a cached copy of ``uri`` that turned out corrupt, so that the next ``localize`` fetches it again
    (a no-op for local URIs: there is no copy to drop)."""
    if not is_remote(uri):
        return
    root = cache_root() / "remote" / hashlib.sha256(uri.encode()).hexdigest()[:24]
    if Path(local).parent != root:
        return
    with _node_lock(root / ".lock"):
        shutil.rmtree(local, ignore_errors=True)


def sha256_of(uri: str, options: StorageOptions | None = None, chunk: int = 1 << 22) -> str:
    fs, path = filesystem(uri, options)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclasses.dataclass
class FileEntry:
    """One file a manifest vouches for. ``path`` is relative to the manifest's folder."""

    path: str
    rows: int
    bytes: int
    sha256: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Manifest:
    """The table of contents of a finished dataset folder (sparse shards, index shards, examples, ...)."""

    kind: str
    files: list[FileEntry]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    created: float = dataclasses.field(default_factory=time.time)
    version: int = MANIFEST_VERSION

    @property
    def total_rows(self) -> int:
        return sum(f.rows for f in self.files)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> Manifest:
        try:
            raw = json.loads(text)
            files = [FileEntry(**f) for f in raw["files"]]
            return cls(
                kind=raw["kind"],
                files=files,
                metadata=raw.get("metadata", {}),
                created=raw.get("created", 0.0),
                version=raw.get("version", MANIFEST_VERSION),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{source}: not a valid laconic_ray manifest ({e})") from None


def describe_file(
    folder_uri: str, relpath: str, rows: int, options: StorageOptions | None = None, **extra: Any
) -> FileEntry:
    """Measure a file already written under ``folder_uri`` into a manifest entry (size + sha256)."""
    uri = join(folder_uri, relpath)
    fs, path = filesystem(uri, options)
    return FileEntry(
        path=relpath,
        rows=int(rows),
        bytes=int(fs.size(path)),
        sha256=sha256_of(uri, options),
        extra=dict(extra),
    )


def write_file(
    folder_uri: str, relpath: str, data: bytes, rows: int, options: StorageOptions | None = None, **extra: Any
) -> FileEntry:
    """Write ``data`` atomically under ``folder_uri`` and return its manifest entry (hashed in memory, so the
    file is never read back, which matters on object storage)."""
    write_bytes(join(folder_uri, relpath), data, options)
    return FileEntry(
        path=relpath,
        rows=int(rows),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        extra=dict(extra),
    )


def write_manifest(folder_uri: str, manifest: Manifest, options: StorageOptions | None = None) -> str:
    """Write ``manifest.json`` atomically; call it only after every listed file is written."""
    uri = join(folder_uri, MANIFEST_NAME)
    write_bytes(uri, manifest.to_json().encode(), options)
    return uri


def read_manifest(
    folder_uri: str, options: StorageOptions | None = None, *, kind: str | None = None, verify: bool = False
) -> Manifest:
    """Read a folder's manifest; raise :class:`StorageError` if it is missing (the job never finished).

    ``verify=True`` also checks every listed file's size and checksum (reads every byte).
    """
    uri = join(folder_uri, MANIFEST_NAME)
    if not exists(uri, options):
        if not exists(folder_uri, options):
            raise StorageError(
                f"{folder_uri}: does not exist (check the path, or run the stage that writes it)"
            )
        raise StorageError(
            f"{folder_uri}: no {MANIFEST_NAME}: the job that writes it has not finished (rerun it to complete it), "
            "or this folder is not a laconic_ray output"
        )
    manifest = Manifest.from_json(read_bytes(uri, options).decode(), source=uri)
    if kind is not None and manifest.kind != kind:
        raise StorageError(f"{uri}: holds a {manifest.kind!r} dataset, expected {kind!r}")
    if verify:
        verify_files(folder_uri, manifest.files, options)
    return manifest


def check_bytes(uri: str, data: bytes, entry: FileEntry) -> None:
    """Check bytes already read against their manifest entry (cheap: no second read)."""
    if len(data) != entry.bytes:
        raise StorageError(
            f"{uri}: {len(data)} bytes, the manifest says {entry.bytes} (truncated or replaced)"
        )
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise StorageError(f"{uri}: checksum differs from the manifest (corrupt or replaced)")


def verify_files(folder_uri: str, files: list[FileEntry], options: StorageOptions | None = None) -> None:
    for entry in files:
        uri = join(folder_uri, entry.path)
        fs, path = filesystem(uri, options)
        if not fs.exists(path):
            raise StorageError(f"{uri}: listed in the manifest but missing")
        size = fs.size(path)
        if size != entry.bytes:
            raise StorageError(
                f"{uri}: {size} bytes, the manifest says {entry.bytes} (truncated or replaced)"
            )
        if sha256_of(uri, options) != entry.sha256:
            raise StorageError(f"{uri}: checksum differs from the manifest (corrupt or replaced)")
