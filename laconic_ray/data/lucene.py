"""BM25 through pyserini (Lucene/Anserini): Java discovery, a safe import, indexes built on the fly.

Why the care:

* Anserini 1.x needs Java 21+. pyjnius finds the JVM through ``JAVA_HOME``; we take a ``JAVA_HOME`` that
  points at Java 21+, else the newest Java 21+ under ``/usr/lib/jvm``, and otherwise fail with a message that
  says what was found and what to install.
* pyserini 1.6 builds an OpenAI client when its search package is imported and raises without
  ``OPENAI_API_KEY``. We set a placeholder for the import only and remove it again, so no fake key reaches the
  user's environment or any subprocess started later.
* The index is the BEIR "flat" setup Anserini's regressions use (``contents = title + " " + text``, default
  English analyzer, BM25 k1=0.9 b=0.4), cached by corpus fingerprint so repeated runs do not rebuild it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from laconic_ray import storage
from laconic_ray.data.beir import BeirDataset

log = logging.getLogger(__name__)

MIN_JAVA = 21
JVM_ROOTS = ("/usr/lib/jvm", "/usr/java", "/opt/java", "/Library/Java/JavaVirtualMachines")


class JavaNotFoundError(RuntimeError):
    """No Java 21+ for Anserini; the message lists what was found."""


def java_version(home: str | os.PathLike) -> int | None:
    """Major version of the JDK at ``home`` (from its ``release`` file), or None if it is not a JDK."""
    release = Path(home) / "release"
    if not release.is_file():
        return None
    match = re.search(r'JAVA_VERSION="(\d+)(?:\.(\d+))?', release.read_text(errors="replace"))
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major  # "1.8" style


def find_java_home(minimum: int = MIN_JAVA) -> str:
    """``JAVA_HOME`` if it is Java ``minimum``+, else the newest such JDK in the usual places."""
    found: list[str] = []
    configured = os.environ.get("JAVA_HOME")
    if configured:
        version = java_version(configured)
        if version is not None and version >= minimum:
            return configured
        found.append(f"JAVA_HOME={configured} (Java {version or 'unknown'})")
    candidates = []
    for root in JVM_ROOTS:
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            for home in (os.path.join(root, name), os.path.join(root, name, "Contents", "Home")):
                version = java_version(home)
                if version is not None:
                    candidates.append((version, home))
                    found.append(f"{home} (Java {version})")
    good = sorted((v, h) for v, h in candidates if v >= minimum)
    if good:
        return good[-1][1]
    raise JavaNotFoundError(
        f"BM25 through pyserini/Anserini needs Java {minimum}+; found: {', '.join(found) or 'none'}. Install a JDK "
        f"{minimum}+ (e.g. apt install openjdk-21-jdk-headless) and set JAVA_HOME to it."
    )


@contextlib.contextmanager
def _placeholder_openai_key() -> Iterator[None]:
    """pyserini 1.6 builds an OpenAI client at import; give it a placeholder key for the import only."""
    had = "OPENAI_API_KEY" in os.environ
    if not had:
        os.environ["OPENAI_API_KEY"] = "unused-placeholder-for-pyserini-import"
    try:
        yield
    finally:
        if not had:
            os.environ.pop("OPENAI_API_KEY", None)


_READY = False


class BM25Unavailable(RuntimeError):
    """pyserini (the `bm25` extra) or a suitable JDK is missing."""


def import_pyserini():
    """Configure Java and import pyserini's Lucene classes; returns the ``pyserini.search.lucene`` module."""
    global _READY
    import importlib.util

    if importlib.util.find_spec("pyserini") is None:
        raise BM25Unavailable(
            "BM25 needs pyserini and a JDK 21+, which a plain `pip install laconic_ray` leaves out: "
            "pip install 'laconic_ray[bm25]' (retriever=bm25, mining hard negatives, the quickstart's baseline)"
        )
    if not _READY:
        home = find_java_home()
        os.environ["JAVA_HOME"] = home
        os.environ["PATH"] = f"{os.path.join(home, 'bin')}{os.pathsep}{os.environ.get('PATH', '')}"
        _READY = True
    with _placeholder_openai_key():
        import pyserini.search.lucene as lucene
    return lucene


def corpus_fingerprint(dataset: BeirDataset) -> str:
    fs, path = storage.filesystem(dataset.corpus_uri(), dataset.options)
    info = fs.info(path)
    key = f"{dataset.root}|{info.get('size')}|{info.get('mtime', info.get('LastModified', ''))}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


SEARCH_CHUNK = 1000  # queries per pyserini batch: the progress line's step (a batch is seconds of work)


def default_cache() -> Path:
    return storage.cache_root() / "lucene"


LAYOUTS = ("flat", "multifield")


def build_bm25_index(
    dataset: BeirDataset, cache_dir: str | os.PathLike | None = None, threads: int = 2, layout: str = "flat"
) -> str:
    """A Lucene index of the corpus, built once per corpus and layout and cached.

    ``flat``: one field, title + " " + text (Anserini's beir-v1.0.0-*.flat). ``multifield``: title and text
    in separate fields, both searched with boost 1 (Anserini's *.multifield, the setup behind BEIR's published
    BM25 figures, e.g. SciFact nDCG@10 0.665; flat gives 0.679 there).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"BM25 layout must be one of {LAYOUTS}, got {layout!r}")
    suffix = "" if layout == "flat" else f"-{layout}"
    target = Path(cache_dir or default_cache()) / f"{dataset.name}-{corpus_fingerprint(dataset)}{suffix}"
    if (target / "laconic-complete").exists():
        return str(target)
    lucene = import_pyserini()  # noqa: F841 (configures the JVM classpath)
    from jnius import autoclass

    with tempfile.TemporaryDirectory() as tmp:
        docs = Path(tmp) / "docs.jsonl"
        with open(docs, "w", encoding="utf-8") as f:
            for doc in dataset.corpus():
                record = (
                    {"id": doc.id, "contents": doc.full_text()}
                    if layout == "flat"
                    else {"id": doc.id, "title": doc.title, "contents": doc.text}
                )
                f.write(json.dumps(record) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        building = Path(f"{target}.building")
        args = [
            "-collection",
            "JsonCollection",
            "-input",
            tmp,
            "-index",
            str(building),
            "-generator",
            "DefaultLuceneDocumentGenerator",
            "-threads",
            str(threads),
            "-storePositions",
            "-storeDocvectors",
            "-storeRaw",
            "-quiet",
            *(["-fields", "title"] if layout == "multifield" else []),
        ]
        log.info("building a BM25 index of %s in %s", dataset.root, target)
        autoclass("io.anserini.index.IndexCollection").main(args)
    if target.exists():
        import shutil

        shutil.rmtree(target)
    building.rename(target)
    (target / "laconic-complete").write_text(dataset.root)
    return str(target)


class BM25:
    """BM25 over a Lucene index (pyserini's searcher), with batch search and single-document scoring."""

    def __init__(
        self, index_dir: str, k1: float = 0.9, b: float = 0.4, threads: int = 2, layout: str = "flat"
    ) -> None:
        lucene = import_pyserini()
        from pyserini.index.lucene import LuceneIndexReader

        self.searcher = lucene.LuceneSearcher(index_dir)
        self.searcher.set_bm25(k1, b)
        self.reader = LuceneIndexReader(index_dir)
        self.k1, self.b, self.threads = k1, b, threads
        self.fields = {"contents": 1.0, "title": 1.0} if layout == "multifield" else {}

    def batch_search(
        self, queries: Sequence[str], qids: Sequence[str], k: int
    ) -> dict[str, list[tuple[str, float]]]:
        from laconic_ray.progress import Progress

        out: dict[str, list[tuple[str, float]]] = {}
        queries, qids = list(queries), list(qids)
        with Progress(total=len(qids), what="queries", desc="bm25") as progress:
            for start in range(0, len(qids), SEARCH_CHUNK):
                chunk = qids[start : start + SEARCH_CHUNK]
                hits = self.searcher.batch_search(
                    queries[start : start + SEARCH_CHUNK],
                    chunk,
                    k=k,
                    threads=self.threads,
                    fields=self.fields,
                )
                out.update({qid: [(h.docid, float(h.score)) for h in hits.get(qid, [])] for qid in chunk})
                progress.update(len(chunk))
        return out

    def search(self, query: str, k: int) -> list[tuple[str, float]]:
        return [(h.docid, float(h.score)) for h in self.searcher.search(query, k=k, fields=self.fields)]

    def score(self, query: str, docid: str) -> float:
        """BM25 score of one document for a query, ranked or not."""
        from jnius import autoclass

        similarity = autoclass("org.apache.lucene.search.similarities.BM25Similarity")(self.k1, self.b)
        return float(self.reader.compute_query_document_score(docid, query, similarity=similarity))


def build_impact_index(collection_dir: str, index_dir: str, threads: int = 2) -> str:
    """A Lucene impact index of a JsonVectorCollection folder (integer weights, pretokenized terms)."""
    import_pyserini()
    from jnius import autoclass

    args = [
        "-collection",
        "JsonVectorCollection",
        "-input",
        str(collection_dir),
        "-index",
        str(index_dir),
        "-generator",
        "DefaultLuceneDocumentGenerator",
        "-threads",
        str(threads),
        "-impact",
        "-pretokenized",
        "-quiet",
    ]
    autoclass("io.anserini.index.IndexCollection").main(args)
    return str(index_dir)


class ImpactSearcher:
    """Lucene impact search (Anserini's SimpleImpactSearcher) with integer query weights."""

    def __init__(self, index_dir: str) -> None:
        import_pyserini()
        from jnius import autoclass

        self._searcher = autoclass("io.anserini.search.SimpleImpactSearcher")(str(index_dir))
        self._map = autoclass("java.util.HashMap")
        self._int = autoclass("java.lang.Integer")

    def search(self, weights: dict[str, int], k: int) -> list[tuple[str, float]]:
        query = self._map()
        for term, weight in weights.items():
            query.put(term, self._int(int(weight)))
        return [(hit.docid, float(hit.score)) for hit in self._searcher.search(query, k)]
