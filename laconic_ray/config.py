"""Typed configuration: one dataclass schema per stage, loaded from YAML + dotlist overrides by omegaconf.

This is the only module that imports omegaconf. ``load_config(Schema, path, overrides)`` merges, in order:
the schema's defaults, the YAML file (and the files its ``_base_`` key names, recursively, relative to it),
then ``key=value`` overrides from the command line. ``${...}`` interpolation works across all of them
(``${oc.env:LACONIC_DATA}`` included). An unknown or mistyped key is a :class:`ConfigError` that names the
key and where it came from; values are then checked by each schema's ``validate()``, again naming the key.

Components never receive these objects: builders turn them into plain keyword arguments (torchtune's rule),
so that the library can be used without configs at all.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from laconic_ray.storage import StorageOptions

# index search modes (laconic_ray/index/inverted.py MODES): exact; approximate (block-max, alpha 0.8);
# candidates (documents from each query term's heaviest postings, for flat block bounds)
SEARCH_MODES = ("exact", "approximate", "candidates")

T = TypeVar("T")
BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the key (and file) and what was expected."""


def check(condition: bool, key: str, message: str) -> None:
    """Raise :class:`ConfigError` for ``key`` unless ``condition`` holds; used by every ``validate()``."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


# --------------------------------------------------------------------------------------------------- shared


@dataclasses.dataclass
class StorageConfig:
    """Object storage access. Credentials come from the AWS chain (env, profile, instance role), never here."""

    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, moto, R2...); default $AWS_ENDPOINT_URL
    region: str | None = None
    anon: bool = False

    def options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.endpoint_url, region=self.region, anon=self.anon)


# -------------------------------------------------------------------------------------------------- loading


def _load_yaml(path: str, seen: tuple[str, ...] = ()) -> DictConfig:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"{path}: {BASE_KEY} includes itself ({' -> '.join((*seen, path))})")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends; the message carries line and column
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping of keys")
    return _resolve_bases(node, path, (*seen, path))


def _resolve_bases(node: DictConfig, path: str, seen: tuple[str, ...]) -> DictConfig:
    """Merge ``_base_`` files (relative to ``path``) under the mapping that names them, at any depth, so a
    training preset can say ``model: {_base_: ../model/llama3-8b.yaml}``."""
    for key in list(node.keys()):
        child = node[key]
        if isinstance(child, DictConfig):
            node[key] = _resolve_bases(child, path, seen)
    bases = node.pop(BASE_KEY, None)
    if bases is None:
        return node
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged = OmegaConf.create()
    for base in bases:
        merged = OmegaConf.merge(merged, _load_yaml(os.path.join(os.path.dirname(path), base), seen))
    return OmegaConf.merge(merged, node)


def _field_names(schema: Any, dotted: str) -> list[str]:
    """The valid keys beside ``dotted`` (for 'did you mean')."""
    cls = schema
    for part in dotted.split(".")[:-1]:
        hints = {f.name: f.type for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        default = next((f for f in dataclasses.fields(cls) if f.name == part), None) if hints else None
        if default is None or default.default_factory is dataclasses.MISSING:
            return []
        cls = type(default.default_factory())
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def _explain(e: OmegaConfBaseException, schema: type, source: str) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, ConfigKeyError):
        names = _field_names(schema, key)
        hint = difflib.get_close_matches(key.split(".")[-1], names, n=1)
        more = f" (did you mean {hint[0]!r}?)" if hint else (f" (valid: {', '.join(names)})" if names else "")
        return ConfigError(f"{source}: unknown key {key!r}{more}")
    return ConfigError(f"{source}: {key}: {first}")


def validate_tree(obj: Any, prefix: str = "") -> None:
    """Call ``validate()`` on every dataclass in the tree, prefixing errors with the dotted key path."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        validate_tree(getattr(obj, f.name), f"{prefix}{f.name}.")
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError as e:
            raise ConfigError(f"{prefix}{e}") from None


def load_config(schema: type[T], path: str | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a validated ``schema`` instance from defaults, a YAML file and ``key=value`` overrides."""
    config = OmegaConf.structured(schema)
    try:
        if path:
            config = OmegaConf.merge(config, _load_yaml(path))
    except OmegaConfBaseException as e:
        raise _explain(e, schema, path or "config") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            config = OmegaConf.merge(config, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise _explain(e, schema, f"override {item!r}") from None
    try:
        obj = OmegaConf.to_object(config)
    except OmegaConfBaseException as e:
        raise _explain(e, schema, path or "config") from None
    validate_tree(obj)
    resolve_paths(obj, os.path.dirname(os.path.abspath(path)) if path else os.getcwd())
    return obj  # type: ignore[return-value]


# Config fields that name files or folders. Relative local paths are made absolute once, here on the driver,
# before a config is shipped to Ray workers (which run in other working directories): outputs always, inputs
# when they exist (else the value is a hub id, a BEIR collection name or a URI, resolved later).
PATH_FIELDS = {
    "name_or_path", "tokenizer", "model", "corpus", "dataset", "data", "data_root", "input", "index",
    "run", "baseline", "pairs", "output", "trace_dir", "index_cache",
}  # fmt: skip
OUTPUT_FIELDS = {"output", "trace_dir", "index_cache"}
FILE_RELATIVE_FIELDS = {"config"}  # a regression condition's stage config: relative to the matrix's file


def _absolute(value: str, output: bool) -> str:
    if not value or "://" in value or value.startswith("laconic:"):
        return value
    path = os.path.expanduser(value)
    return os.path.abspath(path) if output or os.path.exists(path) else value


def resolve_paths(obj: Any, config_dir: str) -> None:
    """Make every relative local path in a loaded config absolute (see ``PATH_FIELDS``), recursively;
    ``FILE_RELATIVE_FIELDS`` against the YAML file's folder, like ``_base_``."""
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            resolve_paths(value, config_dir)
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for item in value:
                resolve_paths(item, config_dir)
        elif f.name in FILE_RELATIVE_FIELDS and isinstance(value, str) and value and not os.path.isabs(value):
            setattr(obj, f.name, os.path.normpath(os.path.join(config_dir, value)))
        elif f.name in PATH_FIELDS and isinstance(value, str):
            setattr(obj, f.name, _absolute(value, f.name in OUTPUT_FIELDS))
        elif f.name in PATH_FIELDS and isinstance(value, list):
            setattr(obj, f.name, [_absolute(v, False) if isinstance(v, str) else v for v in value])


def describe_schema(schema: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """``(dotted key, default, one-line doc)`` of every field of a schema, nested dataclasses included; the
    doc is the field's comment in this file (what ``laconic <stage> --help`` lists)."""
    import inspect
    import re

    comments: dict[str, str] = {}
    try:
        lines = inspect.getsource(schema).splitlines()
    except (OSError, TypeError):
        lines = []
    pending: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("# "))
            continue
        match = re.match(r"\s+(\w+): [^#]+?(?:#\s*(.*))?$", line)
        if match:
            comments[match.group(1)] = match.group(2) or " ".join(pending)
        pending = []
    rows = []
    for f in dataclasses.fields(schema):
        factory = f.default_factory
        default = factory() if factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            rows += describe_schema(type(default), f"{prefix}{f.name}.")
            continue
        rows.append((f"{prefix}{f.name}", repr(default), comments.get(f.name, "")))
    return rows


def to_yaml(obj: Any) -> str:
    """Render a config object back to YAML (saved beside outputs so that runs are reproducible)."""
    return OmegaConf.to_yaml(OmegaConf.structured(obj))


def to_dict(obj: Any) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- stage schemas
# Each stage's schema lives here, beside the others, so that a newcomer finds every knob in one file.


ATTENTION_MODES = ("bidirectional", "echo", "causal")
QUANTIZATIONS = ("none", "bfloat16", "int8", "int4")  # of an encoder at load (SparseEncoder.quantize)


def check_quantization(value: str | None) -> None:
    check(value is None or value in QUANTIZATIONS, "quantization", f"must be one of {QUANTIZATIONS} or null")


@dataclasses.dataclass
class ModelConfig:
    """The sparse encoder to load or build. Presets: conf/model/{tiny,llama3-1b,llama3-3b,llama3-8b}.yaml."""

    # Weights: a hub id, a local dir or an s3:// URI (a laconic checkpoint or a plain HF causal LM).
    # Empty: random init from `architecture` (tests, the quickstart's tiny model).
    name_or_path: str = ""
    # The HF config (model_type + fields) for random init and for memory planning on the meta device.
    architecture: dict[str, Any] = dataclasses.field(default_factory=dict)
    tokenizer: str = ""  # dir, hub id or Llama-3 tokenizer.model; default: name_or_path
    mode: str = "bidirectional"  # bidirectional | echo | causal
    dtype: str = "float32"  # float32 | bfloat16 | float16 (bf16 on GPUs)
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 | flex_attention
    # Text layout. Unset (null): the checkpoint's own (laconic.json, sentence-transformers files, the registry
    # of released models; a masked-LM SPLADE model: no prefixes, [CLS]/[SEP]), else "query: " / "passage: "
    query_prefix: str | None = None
    passage_prefix: str | None = None
    special_tokens: bool | None = None  # add the tokenizer's special tokens (masked LMs); never BOS on Llama
    query_max_length: int = 64
    passage_max_length: int = 192
    top_k: int | None = 512  # weights kept per vector when encoding for the index
    vocab_chunk: int = 2048  # LM-head rows per pooling step: peak memory ~ batch x tokens x vocab_chunk
    pooling_layout: str = "auto"  # auto (per_row on CPU, dense on GPUs) | per_row | dense
    logit_bias: float = (
        0.0  # subtracted before ReLU; >0 only for randomly initialised models (see encoder.py)
    )
    seed: int = 0  # random init only
    # A fixed per-id scale on every output weight (laconic_ray/model/term_weights.py), not trained: "" none |
    # idf:<collection> (sqrt of BM25's idf over that corpus, computed once by the driver; a name under
    # $LACONIC_DATA, a path or s3://) | a term_weights.json (or a folder holding one). Saved with the model
    term_weights: str = ""

    def validate(self) -> None:
        check(
            self.term_weights.strip() != "idf:",
            "term_weights",
            "idf:<collection> needs the collection (idf:scifact, idf:/data/mine, idf:s3://bucket/mine)",
        )
        check(
            bool(self.name_or_path) or bool(self.architecture),
            "name_or_path",
            "give weights (hub id, dir, s3://) or an `architecture` to initialise randomly",
        )
        check(
            not self.architecture or "model_type" in self.architecture,
            "architecture",
            "needs a model_type (e.g. llama)",
        )
        check(
            bool(self.name_or_path) or bool(self.tokenizer),
            "tokenizer",
            "a randomly initialised model needs a tokenizer (dir, hub id or tokenizer.model)",
        )
        check(self.mode in ATTENTION_MODES, "mode", f"must be one of {ATTENTION_MODES}")
        check(
            self.dtype in ("float32", "bfloat16", "float16"), "dtype", "must be float32, bfloat16 or float16"
        )
        check(
            self.query_max_length > 0 and self.passage_max_length > 0,
            "query_max_length",
            "max lengths must be > 0",
        )
        check(self.top_k is None or self.top_k > 0, "top_k", "must be > 0 or null (keep every weight)")
        check(self.vocab_chunk > 0, "vocab_chunk", "must be > 0")
        check(
            self.pooling_layout in ("auto", "per_row", "dense"),
            "pooling_layout",
            "must be auto, per_row or dense",
        )


@dataclasses.dataclass
class RayConfig:
    """Where stages run: a local in-process cluster by default, or an existing one (``address: auto``)."""

    address: str | None = (
        None  # None: start a local cluster in-process; "auto" or "ray://host:10001": connect
    )
    num_cpus: int | None = None  # local cluster only: logical CPUs (default: the machine's)
    object_store_memory: int | None = None  # local cluster only, bytes
    include_dashboard: bool = False  # local cluster only; binds 127.0.0.1

    def validate(self) -> None:
        check(self.num_cpus is None or self.num_cpus > 0, "num_cpus", "must be > 0")


BAD_ROW_POLICIES = ("reject", "raise")


@dataclasses.dataclass
class EncodeConfig:
    """``laconic encode``: a corpus (or queries) -> sparse Parquet parts + manifest, on a Ray Data actor pool."""

    model: str = ""  # laconic checkpoint: local dir, hub id or s3:// URI
    corpus: str = ""  # a .jsonl/.jsonl.gz/.parquet file or a folder of them (local or s3://), or a BEIR name
    output: str = ""  # folder or s3:// prefix for parts/, rejects/ and manifest.json
    data_root: str | None = None  # where a bare collection name is looked up (default $LACONIC_DATA)
    kind: str = "passage"  # passage | query: which prefix and max length the tokenizer applies
    batch_size: int = 32  # texts per forward pass (sorted by length within each shard)
    # weights kept per vector: "model" the checkpoint's own cap (laconic.json's top_k) for passages and none
    # for queries, as laconic eval, the service and the quickstart encode them; N; null keeps every weight > 0
    top_k: int | str | None = "model"
    quantize: bool = False  # store integer impacts round(impact_scale * w) (weight_format "impact")
    impact_scale: float = 100.0
    shard_bytes: int = (
        16 * 1024 * 1024
    )  # input bytes per shard (a .gz file or a Parquet row group is one shard)
    num_actors: int = 1  # encoder actors (each loads the model once)
    num_gpus_per_actor: float = 0.0  # > 0 on GPU clusters
    num_cpus_per_actor: float = 1.0  # also the torch threads of a CPU actor
    device: str = "auto"  # auto (cuda when the actor has a GPU) | cpu | cuda
    dtype: str | None = None  # override the checkpoint's dtype (bfloat16 on GPUs)
    quantization: str | None = None  # none | bfloat16 | int8 (CPU) | int4 (CUDA); null: the checkpoint's
    on_bad_row: str = "reject"  # reject: write rejects/ with reasons and go on | raise: stop at the first
    max_retries: int = 3  # restarts of a failed actor and retries of its shard
    overwrite: bool = False  # rewrite a finished output (never done silently)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    def validate(self) -> None:
        check_quantization(self.quantization)
        check(bool(self.model), "model", "give the checkpoint to encode with (model=<dir, hub id or s3://>)")
        check(bool(self.corpus), "corpus", "give the corpus file or folder (corpus=<uri>)")
        check(bool(self.output), "output", "give the output folder (output=<uri>)")
        check(self.kind in ("passage", "query"), "kind", "must be passage or query")
        check(self.batch_size > 0, "batch_size", "must be > 0")
        check(
            self.top_k is None or self.top_k == "model" or (isinstance(self.top_k, int) and self.top_k > 0),
            "top_k",
            f"must be > 0, null (keep every weight) or model (the checkpoint's own cap), got {self.top_k!r}",
        )
        check(self.impact_scale > 0, "impact_scale", "must be > 0")
        check(self.shard_bytes >= 1024, "shard_bytes", "must be >= 1024")
        check(self.num_actors > 0, "num_actors", "must be > 0")
        check(
            self.num_gpus_per_actor >= 0 and self.num_cpus_per_actor > 0,
            "num_cpus_per_actor",
            "CPUs must be > 0 and GPUs >= 0",
        )
        check(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        check(self.on_bad_row in BAD_ROW_POLICIES, "on_bad_row", f"must be one of {BAD_ROW_POLICIES}")
        check(self.max_retries >= 0, "max_retries", "must be >= 0")


@dataclasses.dataclass
class MineConfig:
    """``laconic mine``: training examples from a BEIR collection (phase 1 weak pairs, phase 2 hard negatives)."""

    dataset: str = ""  # BEIR collection: a name under $LACONIC_DATA, a path or s3:// URI
    data_root: str | None = None
    output: str = ""  # examples folder (Parquet parts + manifest)
    phase: int = 2  # 1: weak pairs, in-batch negatives only | 2: hard negatives from a retriever
    split: str = "train"  # qrels split whose queries are mined (phase 2) or paired (phase 1 extra pairs)
    force: bool = False  # allow mining a split named "test" (never train on test data)
    seed: int = 0
    # phase 1
    # title_body | first_sentence | cropping | inverse_cloze (laconic_ray/data/weak_pairs.py)
    weak_sources: list[str] = dataclasses.field(default_factory=lambda: ["title_body", "first_sentence"])
    pairs_per_document: int = 1  # cropping / inverse_cloze: draws per document and source
    pairs: list[str] = dataclasses.field(default_factory=list)  # extra JSONL files of {query, positive}
    # where pairs come from. phase 1: corpus (the documents alone: no labels read) | qrels (`split`'s judged
    # (query, positive) pairs) | corpus+qrels. phase 2: qrels (`split`'s queries). "": corpus (1), qrels (2)
    source: str = ""
    min_query_chars: int = 10
    max_query_chars: int = 500
    min_positive_chars: int = 50
    max_positive_chars: int = 8000
    max_pairs: int | None = None  # sample this many pairs (seeded, deterministic)
    # phase 2
    retriever: str = "bm25"  # bm25 (pyserini/Lucene) | model (a checkpoint through our own index)
    model: str = ""  # checkpoint for retriever=model
    depth: int = 100  # candidates retrieved per query
    window_start: int = 0  # negatives are sampled from candidate ranks [window_start, window_end)
    window_end: int = 100
    num_negatives: int = 15  # LACONIC phase 2: 1 positive + 15 negatives
    false_negative_margin: float = 0.95  # drop candidates scoring >= margin x the positive's score (0: off)
    rescorer: str = ""  # "module:function" hook: (query, positive, candidates) -> keep flags
    fill: str = "none"  # none: report queries with too few candidates | random: top up with random passages
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    threads: int = 2
    batch_size: int = 32  # retriever=model: encoding batch
    index_cache: str | None = None  # where BM25 indexes are cached (default ~/.cache/laconic_ray/lucene)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)

    def validate(self) -> None:
        check(bool(self.dataset), "dataset", "name the BEIR collection to mine (dataset=<name or path>)")
        check(bool(self.output), "output", "give the output folder (output=<uri>)")
        check(self.phase in (1, 2), "phase", "must be 1 (weak pairs) or 2 (hard negatives)")
        sources = ("corpus", "qrels", "corpus+qrels") if self.phase == 1 else ("qrels",)
        check(
            self.source in ("", *sources),
            "source",
            f"phase {self.phase} mines from {' | '.join(sources)}"
            + (
                " (hard negatives need judged queries; use phase=1 for a corpus alone)"
                if self.phase == 2
                else ""
            ),
        )
        check(
            not self.reads_qrels or self.split.lower() != "test" or self.force,
            "split",
            "refusing to mine the test split (it would leak evaluation data into training); force=true overrides",
        )
        check(self.retriever in ("bm25", "model"), "retriever", "must be bm25 or model")
        from laconic_ray.data.weak_pairs import SOURCES

        unknown = sorted(set(self.weak_sources) - set(SOURCES))
        check(not unknown, "weak_sources", f"{unknown}: not sources; choose from {list(SOURCES)}")
        check(self.pairs_per_document > 0, "pairs_per_document", "must be > 0")
        check(
            self.retriever != "model" or bool(self.model), "model", "retriever=model needs model=<checkpoint>"
        )
        check(self.depth > 0, "depth", "must be > 0")
        check(
            0 <= self.window_start < self.window_end <= self.depth,
            "window_start",
            "need 0 <= window_start < window_end <= depth",
        )
        check(self.num_negatives > 0, "num_negatives", "must be > 0")
        check(0 <= self.false_negative_margin <= 1, "false_negative_margin", "must be in [0, 1]")
        check(self.fill in ("none", "random"), "fill", "must be none or random")
        check(self.max_pairs is None or self.max_pairs > 0, "max_pairs", "must be > 0 or null")

    @property
    def sources(self) -> set[str]:
        """Where this run mines: {"corpus"}, {"qrels"} or both."""
        return set((self.source or ("corpus" if self.phase == 1 else "qrels")).split("+"))

    @property
    def reads_qrels(self) -> bool:
        return "qrels" in self.sources


@dataclasses.dataclass
class LoraConfig:
    """LoRA adapters for one phase (peft). LACONIC: r32/a64 (8B: r16/a32), dropout 0.1, all projections."""

    enabled: bool = True
    r: int = 32
    alpha: int = 64
    dropout: float = 0.1
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def validate(self) -> None:
        check(self.r > 0 and self.alpha > 0, "r", "LoRA rank and alpha must be > 0")
        check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")


PHASES = (0, 1, 2)


@dataclasses.dataclass
class PhaseConfig:
    """One phase of the curriculum: its data, schedule, batch layout, regularisation and adapters.

    Batch arithmetic: every optimizer step consumes ``queries_per_step`` queries globally, as
    ``queries_per_step / (num_workers * micro_batch_queries)`` accumulation micro-steps; each micro-step
    scores a worker's queries against ``group_size`` passages each, gathered from every worker.
    """

    enabled: bool = True
    data: str = ""  # examples folder written by `laconic mine` (phase 0: a corpus file or folder)
    steps: int | None = None  # optimizer steps; null: `epochs` passes over the data
    epochs: float = 1.0
    lr: float = 1e-4
    warmup_ratio: float = 0.05  # linear warm-up over this share of the steps, then cosine decay to 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    queries_per_step: int = 2048  # global, per optimizer step
    micro_batch_queries: int = 64  # per worker and micro-step
    group_size: int = (
        1  # passages per query: 1 = positive only (in-batch negatives); 16 = 1 + 15 hard negatives
    )
    query_max_length: int = 64
    passage_max_length: int = 192
    flops_query: float = 5e-4
    flops_passage: float = 5e-4
    flops_ramp: int = 1000  # quadratic ramp of both FLOPS weights, in micro-steps (LACONIC's code's unit)
    temperature: float = 1.0
    gather_negatives: bool = True  # score against every worker's passages (and scale the loss by world size)
    saturation_weight: float = 1.0  # phase 0 only: weight of the log-saturation term next to the LM loss
    seed: int = 0
    num_workers: int | None = None  # this phase's world size (default scaling.num_workers)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)

    def validate(self) -> None:
        check(self.steps is None or self.steps > 0, "steps", "must be > 0 or null")
        check(self.epochs > 0, "epochs", "must be > 0")
        check(self.lr > 0, "lr", "must be > 0")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        check(
            self.queries_per_step > 0 and self.micro_batch_queries > 0,
            "queries_per_step",
            "batch sizes must be > 0",
        )
        check(self.group_size >= 1, "group_size", "must be >= 1")
        check(self.flops_query >= 0 and self.flops_passage >= 0, "flops_query", "FLOPS weights must be >= 0")
        check(self.temperature > 0, "temperature", "must be > 0")


@dataclasses.dataclass
class ScalingSettings:
    """Ray Train workers. On GPU clusters: use_gpu=true, one worker per GPU, FSDP across them."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used when use_gpu
    resources_per_worker: dict[str, float] = dataclasses.field(
        default_factory=dict
    )  # e.g. {"accelerator": 1}
    placement_strategy: str = "PACK"  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    gpu_memory_gb: float = 80.0  # per GPU, for `laconic plan`

    def validate(self) -> None:
        check(self.num_workers > 0, "num_workers", "must be > 0")
        check(
            self.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
            "placement_strategy",
            "must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD",
        )


@dataclasses.dataclass
class TrackingConfig:
    """Experiment tracking of the training loop's metrics (rank 0, every ``log_every`` steps)."""

    backend: str = "none"  # none | tensorboard (tensorboardX) | mlflow | wandb (pip install mlflow / wandb)
    dir: str = (
        ""  # tensorboard: log folder (default <output>/tensorboard); mlflow: tracking URI; wandb: run dir
    )
    project: str = "laconic"  # mlflow experiment / wandb project

    def validate(self) -> None:
        from laconic_ray.training.tracking import BACKENDS, missing_package

        check(self.backend in BACKENDS, "backend", f"must be one of {BACKENDS}")
        package = missing_package(self.backend)
        check(package is None, "backend", f"{self.backend} needs `pip install {package}` (on every node)")


@dataclasses.dataclass
class TrainConfig:
    """``laconic train``: the curriculum (optional phase 0, phase 1, phase 2), one Ray Train run per phase."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    output: str = ""  # run root (local or s3://): <output>/phase<N>/model is each phase's export
    name: str = (
        "laconic"  # run name; rerunning with the same name and output resumes from the last checkpoint
    )
    phase: int | None = None  # run only this phase (its predecessor's export must exist); null: all enabled
    phase0: PhaseConfig = dataclasses.field(default_factory=lambda: PhaseConfig(enabled=False))
    phase1: PhaseConfig = dataclasses.field(default_factory=PhaseConfig)
    phase2: PhaseConfig = dataclasses.field(
        default_factory=lambda: PhaseConfig(
            lr=5e-5,
            queries_per_step=128,
            micro_batch_queries=8,
            group_size=16,
            query_max_length=192,
            flops_query=1e-3,
            flops_passage=1e-3,
            flops_ramp=100,
        )
    )
    scaling: ScalingSettings = dataclasses.field(default_factory=ScalingSettings)
    parallelism: str = "auto"  # auto (fsdp on GPUs, ddp otherwise) | fsdp | ddp
    # bf16 | none: FSDP's compute dtype on GPUs (parameters stay in model.dtype). No fp16: it needs loss
    # scaling, which this trainer does not do
    mixed_precision: str = "bf16"
    gradient_checkpointing: bool = True
    checkpoint_every: int = 100  # optimizer steps between sharded checkpoints
    keep_checkpoints: int = 2
    max_failures: int = 3  # worker failures survived per phase (restart from the last checkpoint)
    log_every: int = 10  # optimizer steps between log lines
    trace_dir: str | None = (
        None  # local folder: record the examples each worker applied per micro-step (tests)
    )
    probe_texts: list[str] = dataclasses.field(
        default_factory=list
    )  # encoded by the trained model at the end
    logging: TrackingConfig = dataclasses.field(default_factory=TrackingConfig)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    def validate(self) -> None:
        check(bool(self.output), "output", "give the run's output folder or s3:// prefix (output=<uri>)")
        check(bool(self.name), "name", "must not be empty")
        check(
            self.phase is None or self.phase in PHASES,
            "phase",
            "must be 0, 1, 2 or null (all enabled phases)",
        )
        check(self.parallelism in ("auto", "fsdp", "ddp"), "parallelism", "must be auto, fsdp or ddp")
        check(self.mixed_precision in ("bf16", "none"), "mixed_precision", "must be bf16 or none")
        for index in self.phases():
            phase = getattr(self, f"phase{index}")
            check(
                phase.lora.enabled or self.model.dtype == "float32",
                f"phase{index}.lora.enabled",
                f"false trains every weight, and with model.dtype={self.model.dtype} AdamW would update "
                "16-bit weights (steps below their resolution are lost); set model.dtype=float32 (FSDP still "
                "computes in bf16 with mixed_precision=bf16) or enable LoRA",
            )
        check(self.checkpoint_every > 0 and self.keep_checkpoints > 0, "checkpoint_every", "must be > 0")
        check(self.max_failures >= 0, "max_failures", "must be >= 0")
        for index in PHASES:
            phase = getattr(self, f"phase{index}")
            if (self.phase == index or (self.phase is None and phase.enabled)) and index > 0:
                check(
                    bool(phase.data),
                    f"phase{index}.data",
                    "give the examples folder written by `laconic mine`",
                )

    def phases(self) -> list[int]:
        """The phases this run executes, in order."""
        if self.phase is not None:
            return [self.phase]
        return [i for i in PHASES if getattr(self, f"phase{i}").enabled]


@dataclasses.dataclass
class PlanConfig(TrainConfig):
    """``laconic plan``: a training config, planned rather than run (no data or output needed)."""

    def validate(self) -> None:
        check(
            self.phase is None or self.phase in PHASES,
            "phase",
            "must be 0, 1, 2 or null (all enabled phases)",
        )
        check(
            bool(self.model.architecture),
            "model.architecture",
            "planning needs the architecture (the presets in conf/model/ carry it)",
        )


@dataclasses.dataclass
class IndexConfig:
    """``laconic index``: encoded sparse vectors -> a partitioned inverted index built on CPU Ray tasks."""

    input: str = ""  # a finished sparse folder (the encode stage's output)
    output: str = ""  # index folder: shard-NNNNN/ folders + manifest.json
    num_shards: int = 1
    partition: str = "range"  # range (contiguous slices of the input) | hash (stable hash of the doc id)
    quantization: str = "uint8"  # uint8 | uint16 | float32
    block_size: int = 64  # documents per block (16-256; see laconic_ray/index/inverted.py)
    reorder: str = (
        "bp"  # bp (number documents by graph bisection: tighter block bounds) | none (doc-id order)
    )
    num_cpus_per_task: float = 1.0
    max_retries: int = 3
    force: bool = False  # rebuild an index whose manifest already exists
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    def validate(self) -> None:
        check(bool(self.input), "input", "give the encoded sparse folder (input=<uri>)")
        check(bool(self.output), "output", "give the index folder (output=<uri>)")
        check(self.num_shards > 0, "num_shards", "must be > 0")
        check(self.partition in ("range", "hash"), "partition", "must be range or hash")
        check(
            self.quantization in ("uint8", "uint16", "float32"),
            "quantization",
            "must be uint8, uint16 or float32",
        )
        check(1 <= self.block_size <= 256, "block_size", "must be in [1, 256]")
        check(self.reorder in ("bp", "none"), "reorder", "must be bp or none")
        check(self.num_cpus_per_task > 0 and self.max_retries >= 0, "num_cpus_per_task", "must be > 0")


@dataclasses.dataclass
class HybridConfig:
    """retriever=hybrid: the learned run fused with BM25 (laconic_ray/eval/fusion.py documents both methods)."""

    fusion: str = "rrf"  # rrf (rank-based, nothing to tune) | interpolation (min-max normalised scores)
    rrf_k: int = 60  # rrf: 1 / (rrf_k + rank)
    weight: float = 0.5  # interpolation: the learned run's share; BM25 gets 1 - weight
    depth: int | None = None  # results taken from each run (null: all of the run's k)

    def validate(self) -> None:
        check(self.fusion in FUSIONS, "fusion", f"must be one of {FUSIONS}")
        check(self.rrf_k > 0, "rrf_k", "must be > 0")
        check(0.0 <= self.weight <= 1.0, "weight", "must be in [0, 1]")
        check(self.depth is None or self.depth > 0, "depth", "must be > 0 or null")


@dataclasses.dataclass
class ServeConfig:
    """``laconic serve`` / ``laconic search``: shard actors, a scatter-gather router, an HTTP front end."""

    index: str = ""  # index folder written by `laconic index`
    model: str | None = None  # checkpoint that encodes text queries (loaded once); none: vectors only
    name: str = "laconic"  # names the shard actors and the Serve app (other processes attach by it)
    replicas: int = 1  # actors per shard (throughput, faster failover)
    num_cpus_per_shard: float = 1.0
    threads_per_shard: int = 1  # search threads inside a shard actor for batches
    # scatter-gather over direct connections to the shard actors (~1 ms less per query than actor calls,
    # which remain the fallback); false: actor calls only
    direct: bool = True
    shard_resource: str | None = (
        None  # custom resource each shard actor asks for (pins shards to index nodes)
    )
    max_restarts: int = 3  # a killed shard actor comes back this many times (and reloads its shard)
    timeout_s: float = 10.0  # per shard call, before it is retried
    retries: int = 2  # extra attempts per shard before the response is marked partial
    mode: str = "exact"  # exact | approximate | candidates (see SEARCH_MODES)
    host: str = "127.0.0.1"  # HTTP binds here; set 0.0.0.0 deliberately to expose it
    port: int = 8000
    http_replicas: int = 1
    http_cpus: float = 1.0  # CPUs reserved by each HTTP replica
    access_log: bool = False  # Serve's per-request access log lines (proxy and replica)
    # HTTP: Serve's proxy answers 408 (which clients retry) to a request not answered within this, wherever
    # it is held (e.g. on an HTTP replica killed mid-request, which Serve can hold until the client gives
    # up); null: (retries + 2) x timeout_s, past the longest the searcher takes to answer, partially or not
    request_timeout_s: float | None = None
    # HTTP replicas' young-generation GC threshold (distributed/http.py tune_collector; null: Python's 700,
    # which stopped the event loop for 9-18 ms about twice a second under load)
    http_gc_threshold: int | None = 20000
    # HTTP replicas also answer on ports of their own, skipping Serve's proxy (see distributed/http.py)
    direct_ingress: bool = True
    max_k: int = 1000
    max_batch: int = 256
    max_query_chars: int = 4000
    verify: bool = True  # checksum every shard file when an actor loads it
    check_model: bool = True  # refuse a query model other than the one that encoded the index
    quantization: str | None = None  # none | bfloat16 | int8 (CPU) | int4 (CUDA); null: the checkpoint's
    startup_timeout_s: float = 300.0  # shard actors must be scheduled and loaded within this
    max_batch_queries: int = 256  # concurrent queries sent to the shards together (micro-batching)
    # a batch waits up to this long for the callers of the last one to come back (only when fewer are queued)
    batch_wait_ms: float = 1.0
    # batches with the shards at once over direct connections, spread over the replicas (null: max(2,
    # replicas)): while a shard searches one, the client sends the next and merges the last
    in_flight: int | None = None
    max_query_terms: int = 4096  # HTTP: terms per query vector
    max_body_bytes: int = 8 << 20  # HTTP: request body size
    # learned | hybrid: text queries also through BM25 (a CPU actor, pyserini), the two rankings fused by
    # `hybrid` (fusion rrf | interpolation; depth null: 100, or k if larger); vector queries stay learned-only
    retriever: str = "learned"
    bm25: str = ""  # hybrid: the BEIR collection whose corpus BM25 indexes (once per node, cached) or a
    # built Lucene index folder
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    bm25_layout: str = "multifield"  # multifield (title, text: BEIR's published BM25) | flat
    bm25_cpus: float = 1.0  # CPUs the BM25 actor reserves (fitted to a small local cluster like the shards')
    hybrid: HybridConfig = dataclasses.field(default_factory=HybridConfig)
    # `laconic search`
    query: str = ""
    k: int = 10
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)

    @property
    def http_deadline_s(self) -> float:
        """Seconds Serve's proxy gives an HTTP request before answering 408 (``request_timeout_s``)."""
        if self.request_timeout_s is not None:
            return self.request_timeout_s
        return (self.retries + 2) * self.timeout_s

    def validate(self) -> None:
        check_quantization(self.quantization)
        check(bool(self.index), "index", "give the index folder (index=<uri>)")
        check(self.replicas > 0 and self.http_replicas > 0, "replicas", "must be > 0")
        check(self.num_cpus_per_shard > 0, "num_cpus_per_shard", "must be > 0")
        check(self.max_restarts >= 0 and self.retries >= 0, "max_restarts", "must be >= 0")
        check(self.timeout_s > 0, "timeout_s", "must be > 0")
        check(self.mode in SEARCH_MODES, "mode", f"must be one of {SEARCH_MODES}")
        check(0 < self.port < 65536, "port", "must be a TCP port")
        check(
            self.max_k > 0 and self.max_batch > 0 and self.max_query_chars > 0, "max_k", "limits must be > 0"
        )
        check(0 < self.k <= self.max_k, "k", f"must be in [1, max_k={self.max_k}]")
        check(self.startup_timeout_s > 0, "startup_timeout_s", "must be > 0")
        check(
            self.request_timeout_s is None or self.request_timeout_s > 0,
            "request_timeout_s",
            "must be > 0 (null: derived from timeout_s and retries)",
        )
        check(self.retriever in ("learned", "hybrid"), "retriever", "must be learned or hybrid")
        if self.retriever == "hybrid":
            check(bool(self.bm25), "bm25", "retriever=hybrid needs bm25=<collection or Lucene index folder>")
            check(bool(self.model), "model", "retriever=hybrid needs model=<checkpoint> (text queries)")
            check(self.bm25_layout in ("flat", "multifield"), "bm25_layout", "must be flat or multifield")
            check(self.bm25_cpus > 0, "bm25_cpus", "must be > 0")
        check(self.max_batch_queries > 0 and self.batch_wait_ms >= 0, "max_batch_queries", "must be > 0")
        check(self.in_flight is None or self.in_flight >= 1, "in_flight", "must be >= 1 or null")
        # (0 would turn the collector off: a reference cycle per request would then never be freed)
        check(
            self.http_gc_threshold is None or 1 <= self.http_gc_threshold < 2**31,
            "http_gc_threshold",
            "must be in [1, 2**31) or null",
        )
        check(
            self.max_query_terms > 0 and self.max_body_bytes >= 1024,
            "max_query_terms",
            "limits must be > 0 (max_body_bytes >= 1024)",
        )


FUSIONS = ("rrf", "interpolation")


@dataclasses.dataclass
class EvalConfig:
    """``laconic eval``: a query set through a retriever, a TREC run, metrics against qrels, a comparison."""

    dataset: str = ""  # BEIR collection: a name under $LACONIC_DATA, a path or s3:// URI
    data_root: str | None = None
    split: str = "test"
    retriever: str = (
        "laconic"  # laconic (index + model) | bm25 (pyserini) | hybrid (both, fused) | run (a run file)
    )
    hybrid: HybridConfig = dataclasses.field(default_factory=HybridConfig)
    index: str = ""  # laconic: the index folder (searched in-process) ...
    service: str = ""  # ... or a running service's base URL (http://127.0.0.1:8000)
    model: str = ""  # laconic: checkpoint that encodes the queries
    run: str = ""  # retriever=run: an existing TREC run file
    k: int = 1000  # depth of the run (>= 100 for Recall@100)
    mode: str = "exact"
    latency_queries: int = 0  # laconic: also time this many text queries one at a time (p50/p99 ms)
    check_model: bool = True  # refuse a query model other than the one that encoded the index
    quantization: str | None = None  # none | bfloat16 | int8 (CPU) | int4 (CUDA); null: the checkpoint's
    measures: list[str] = dataclasses.field(default_factory=lambda: ["nDCG@10", "R@100", "RR@10"])
    baseline: str = ""  # a TREC run to compare against (per-query wins/losses, paired tests)
    output: str = ""  # folder for run.trec, metrics.json, per_query.tsv (and the delta plot)
    run_tag: str = ""  # name in the run file (default: the retriever)
    batch_size: int = 32
    bm25_k1: float = 0.9
    bm25_b: float = 0.4
    bm25_layout: str = "multifield"  # multifield (title, text fields: BEIR's published BM25) | flat
    threads: int = 2
    index_cache: str | None = None
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)

    def validate(self) -> None:
        check_quantization(self.quantization)
        check(self.latency_queries >= 0, "latency_queries", "must be >= 0")
        check(bool(self.dataset), "dataset", "name the collection with the qrels (dataset=<name or path>)")
        check(self.bm25_layout in ("flat", "multifield"), "bm25_layout", "must be flat or multifield")
        check(
            self.retriever in ("laconic", "bm25", "hybrid", "run"),
            "retriever",
            "must be laconic, bm25, hybrid or run",
        )
        if self.retriever in ("laconic", "hybrid"):
            check(bool(self.index) or bool(self.service), "index", "give index=<uri> or service=<url>")
            check(bool(self.model) or bool(self.service), "model", "give the checkpoint that encodes queries")
        check(self.retriever != "run" or bool(self.run), "run", "retriever=run needs run=<trec file>")
        check(self.k >= 100, "k", "must be >= 100 (Recall@100)")
        check(self.mode in SEARCH_MODES, "mode", f"must be one of {SEARCH_MODES}")


@dataclasses.dataclass
class Condition:
    """One row of a regression matrix: a stage run with its overrides and the metrics it must reproduce."""

    name: str = ""
    stage: str = "eval"  # any laconic stage whose summary carries "metrics"
    config: str = "../eval.yaml"  # the stage's YAML, relative to the matrix's file (as `_base_` is)
    overrides: list[str] = dataclasses.field(default_factory=list)
    expected: dict[str, float] = dataclasses.field(default_factory=dict)
    ok: float = 0.003  # |actual - expected| <= ok: OK
    okish: float = 0.01  # <= okish: OKish; beyond: FAIL
    at_least: bool = False  # only a shortfall counts (e.g. "nDCG@10 >= 0.60"); above expected is OK

    def validate(self) -> None:
        check(bool(self.name), "name", "every condition needs a name")
        check(bool(self.expected), "expected", f"condition {self.name!r} expects no metric")
        check(0 <= self.ok <= self.okish, "ok", "need 0 <= ok <= okish")


@dataclasses.dataclass
class RegressConfig:
    """``laconic regress``: run a matrix of conditions and classify each metric OK / OKish / FAIL."""

    conditions: list[Condition] = dataclasses.field(default_factory=list)
    only: list[str] = dataclasses.field(default_factory=list)  # condition names to run (default: all)
    output: str = ""  # where to write the report (JSON + markdown); empty: stdout only

    def validate(self) -> None:
        check(bool(self.conditions), "conditions", "the matrix has no conditions")
        names = [c.name for c in self.conditions]
        check(len(set(names)) == len(names), "conditions", "condition names must be unique")
        unknown = set(self.only) - set(names)
        check(not unknown, "only", f"unknown condition(s) {sorted(unknown)}")


@dataclasses.dataclass
class ExportConfig:
    """``laconic export``: sparse vectors -> Anserini JsonVectorCollection or Seismic JSON lines, and back
    (``format=parquet``: a folder of either's JSON lines -> our sparse Parquet)."""

    input: str = ""  # a finished sparse folder (parquet: a folder of .jsonl vector files)
    output: str = ""  # destination folder
    format: str = "anserini"  # anserini | seismic | parquet (import)
    impact_scale: float = 100.0  # anserini: integer impacts round(impact_scale * w)
    files: int = 2  # anserini indexes one file per thread
    terms: str = (
        "ids"  # ids ("2001") | tokens (the tokenizer's strings, as the reference implementations write)
    )
    tokenizer: str = (
        ""  # terms=tokens / parquet with token terms: model or tokenizer (default: the vectors' model)
    )
    vocab_size: int = 0  # parquet with id terms: the vocabulary size (30522 for BERT, 128256 for Llama-3)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)

    def validate(self) -> None:
        check(
            bool(self.input) and bool(self.output), "input", "give input=<sparse folder> and output=<folder>"
        )
        check(
            self.format in ("anserini", "seismic", "parquet"),
            "format",
            "must be anserini, seismic or parquet",
        )
        check(self.impact_scale > 0 and self.files > 0, "impact_scale", "must be > 0")
        check(self.terms in ("ids", "tokens"), "terms", "must be ids or tokens")
        check(
            self.format != "parquet" or bool(self.tokenizer) or self.vocab_size > 0,
            "vocab_size",
            "importing id terms needs vocab_size=<n> (or tokenizer=<...> for token-string terms)",
        )


@dataclasses.dataclass
class StudyConfig:
    """``laconic study``: a grid of stage runs (each cell runs ``stages`` in order), resumable, reported."""

    name: str = ""
    description: str = ""  # the report's opening paragraph (what is compared, and caveats)
    output: str = ""  # local folder: cells/<cell>/ (each stage's output), results.json/.csv, report.md, PNGs
    stages: list[str] = dataclasses.field(default_factory=list)  # e.g. [quickstart] or [encode, index, eval]
    # per stage: key=value overrides as on its command line; "{cell}" is the cell's folder
    overrides: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # "stage.key": values
    report: list[str] = dataclasses.field(default_factory=list)  # dotted paths into stage summaries
    pareto: list[str] = dataclasses.field(default_factory=list)  # [cost metric, quality metric]: a PNG
    select: str = ""  # a metric (higher is better, e.g. a dev split's): the cell it picks is marked
    # held-out metrics (e.g. test), left out of the main table and shown once, after the choice, in their own
    final: list[str] = dataclasses.field(default_factory=list)
    stability_steps: int = 20  # early-training window (logged steps) for the stability numbers and figure

    def validate(self) -> None:
        from laconic_ray.cli import STAGES
        from laconic_ray.storage import is_remote

        check(bool(self.name) and bool(self.output), "output", "give name and output (a local folder)")
        check(not is_remote(self.output), "output", "a study's folder is local (cells may write s3://)")
        check(bool(self.stages), "stages", "list the stages each cell runs, e.g. [encode, index, eval]")
        unknown = [s for s in self.stages if s not in STAGES or s in ("study", "serve")]
        check(not unknown, "stages", f"{unknown}: not stages a study can run")
        for key, values in self.grid.items():
            stages = {part.strip().partition(".")[0] for part in key.split(",")}
            check(stages <= set(self.stages), "grid", f"{key}: names a stage not in stages")
            check(isinstance(values, list) and len(values) > 0, "grid", f"{key}: give a non-empty list")
        check(len(self.pareto) in (0, 2), "pareto", "give two metrics: [cost, quality]")
        check(
            not set(self.final) & {*self.report, self.select},
            "final",
            "a held-out metric is not also reported or selected on",
        )
        check(self.stability_steps > 1, "stability_steps", "must be > 1")


@dataclasses.dataclass
class QuickstartConfig:
    """``laconic quickstart``: every stage end to end on one collection, on a local Ray cluster and local disk:
    weak pairs -> phase 1 -> hard negatives -> phase 2 -> Ray Data encode -> sharded index -> serve -> eval."""

    dataset: str = "scifact"  # a name under $LACONIC_DATA (downloaded from BEIR if missing), or a path
    data_root: str | None = None
    download: bool = True  # fetch the public BEIR archive when the collection is not found (needs internet)
    output: str = "runs/quickstart"
    corpus_limit: int | None = None  # shortened runs: the first N documents plus every judged document
    query_limit: int | None = None  # shortened runs: the first N judged queries of each split
    # hold out every Nth judged *train* query (by id) as a dev split: mining never sees it, the final model is
    # also evaluated on it (metrics.<final>_dev), so a study can choose on dev and report test once (null: no dev)
    dev_every: int | None = None
    dev_from: str = "train"  # the split dev queries are taken from (test only where there is no other)
    hybrid: HybridConfig = dataclasses.field(
        default_factory=HybridConfig
    )  # the report's hybrid row (baselines)
    weak_pairs: int | None = 20000  # phase-1 pairs sampled from the corpus
    # sqrt(idf) term weights from the collection's own corpus on the model from its start (no labels read):
    # train.model.term_weights=idf:<the collection>, computed once into <output>/train/term_weights.json
    term_weights: bool = False
    num_shards: int = 2
    http: bool = True  # also query the index over HTTP (Ray Serve) for the latency figures
    port: int = 8000
    serve_timeout_s: float = 10.0  # per shard call of the served evaluation (timeout_s of `laconic serve`)
    baselines: bool = True  # also evaluate the untrained model, phase 1 and BM25 (the report's comparison)
    encode_batch_size: int = 32
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mine: MineConfig = dataclasses.field(default_factory=MineConfig)
    ray: RayConfig = dataclasses.field(default_factory=lambda: RayConfig(num_cpus=4))

    def validate(self) -> None:
        check(bool(self.dataset), "dataset", "name a BEIR collection (e.g. scifact) or give its path")
        check(bool(self.output), "output", "give a folder for the run's outputs")
        check(self.num_shards > 0, "num_shards", "must be > 0")
        check(self.serve_timeout_s > 0, "serve_timeout_s", "must be > 0")
        check(self.corpus_limit is None or self.corpus_limit > 0, "corpus_limit", "must be > 0 or null")
        check(
            self.dev_every is None or self.dev_every >= 2,
            "dev_every",
            "must be >= 2 (1 in N held out) or null",
        )
