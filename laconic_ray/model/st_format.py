"""sentence-transformers' SparseEncoder folder format, read and written for masked-LM SPLADE models.

A folder saved by sentence-transformers (v5 or v6) holds the HF masked LM at its root plus ``modules.json``
(a Transformer/MLMTransformer then a ``SpladePooling``), ``config_sentence_transformers.json`` (prompts) and
the pooling's ``1_SpladePooling/config.json``. Reading maps those onto our settings, so that such a folder
encodes as sentence-transformers would; writing adds them beside ours, so that a masked-LM folder we save
loads in sentence-transformers too. Causal LMs (LACONIC) have no sentence-transformers module and get none.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODULES = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
POOLING_DIR = "1_SpladePooling"
# sentence-transformers' SpladePooling activation names -> ours (theirs name the part before the first log1p)
ACTIVATIONS = {"relu": "log1p_relu", "log1p_relu": "log1p_log1p_relu"}
# module type paths from sentence-transformers v5, which v6 still resolves
ST_MLM = "sentence_transformers.sparse_encoder.models.MLMTransformer"
ST_POOLING = "sentence_transformers.sparse_encoder.models.SpladePooling"


def locate(folder: str) -> tuple[str, str | None]:
    """(folder holding the masked LM, folder of the static query table or None). A Router (document-only
    model: MLM + pooling for documents, a ``SparseStaticEmbedding`` idf table for queries) keeps each route's
    modules in subfolders named ``<route>_<i>_<Class>``; any other folder is its own model folder."""
    root = Path(folder)
    router = _read_json(root / "router_config.json") if (root / MODULES).is_file() else {}
    if not router:
        return folder, None
    structure = router.get("structure", {})
    document = [name for name in structure.get("document", []) if not name.endswith("SpladePooling")]
    query = structure.get("query", [])
    if len(document) != 1 or len(query) != 1 or not query[0].endswith("SparseStaticEmbedding"):
        raise ValueError(
            f"{folder}/router_config.json: routes {structure}; only document = (transformer, SpladePooling) "
            "with query = SparseStaticEmbedding is supported"
        )
    return str(root / document[0]), str(root / query[0])


def read_settings(folder: str, max_length: int) -> dict[str, Any] | None:
    """Our settings from a sentence-transformers SPLADE folder; ``None`` when it is not one. ``max_length``:
    the tokenizer's, which is where sentence-transformers v6 keeps ``max_seq_length``."""
    root = Path(folder)
    if not (root / MODULES).is_file():
        return None
    model_dir, query_dir = locate(folder)
    if query_dir is None:
        modules = json.loads((root / MODULES).read_text())
        pooling = [root / m["path"] for m in modules if m.get("type", "").endswith("SpladePooling")]
    else:
        pooling = [
            p for p in root.iterdir() if p.name.startswith("document_") and p.name.endswith("SpladePooling")
        ]
    if not pooling:
        raise ValueError(f"{folder}/{MODULES}: no SpladePooling module: not a SPLADE model")
    pooling_config = json.loads((pooling[0] / "config.json").read_text())
    if pooling_config.get("pooling_strategy", "max") != "max":
        raise ValueError(
            f"{folder}: pooling_strategy {pooling_config['pooling_strategy']!r}, only max is built"
        )
    activation = pooling_config.get("activation_function", "relu")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{folder}: SpladePooling activation_function {activation!r} is unknown")
    prompts = _read_json(root / ST_CONFIG).get("prompts") or {}
    module_config = _read_json(Path(model_dir) / "sentence_bert_config.json")
    length = int(module_config.get("max_seq_length") or max_length)  # v5 keeps it here, v6 in the tokenizer
    return {
        "mode": "bidirectional",
        "query_prefix": prompts.get("query", ""),
        "passage_prefix": prompts.get("document", prompts.get("passage", "")),
        "query_max_length": length,
        "passage_max_length": length,
        "special_tokens": True,
        "activation": ACTIVATIONS[activation],
        "query_encoder": "model" if query_dir is None else "idf",
    }


def query_weights(query_dir: str) -> Any:
    """The static query table (one weight per vocabulary id) of a ``SparseStaticEmbedding`` folder."""
    from safetensors.torch import load_file

    return load_file(str(Path(query_dir) / "model.safetensors"))["weight"].float()


def write_files(folder: str, settings: Any, vocab_size: int) -> None:
    """Add the sentence-transformers files to a saved masked-LM folder (weights and tokenizer already in)."""
    root = Path(folder)
    length = settings.passage_max_length  # sentence-transformers has one max_seq_length: documents' wins
    if settings.query_max_length != length:
        log.warning(
            "%s: sentence-transformers will truncate queries at %d tokens, not %d (it has one max length)",
            folder, length, settings.query_max_length,
        )  # fmt: skip
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": ST_MLM},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": ST_POOLING},
    ]
    (root / MODULES).write_text(json.dumps(modules, indent=2))
    prompts = {
        k: v for k, v in (("query", settings.query_prefix), ("document", settings.passage_prefix)) if v
    }
    st_config = {"model_type": "SparseEncoder", "prompts": prompts, "default_prompt_name": None,
                 "similarity_fn_name": "dot"}  # fmt: skip
    (root / ST_CONFIG).write_text(json.dumps(st_config, indent=2))
    (root / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": length, "do_lower_case": False})
    )
    activation = {ours: theirs for theirs, ours in ACTIVATIONS.items()}[settings.activation]
    (root / POOLING_DIR).mkdir(exist_ok=True)
    pooling = {
        "pooling_strategy": "max",
        "activation_function": activation,
        "word_embedding_dimension": vocab_size,
    }
    (root / POOLING_DIR / "config.json").write_text(json.dumps(pooling, indent=2))
    tokenizer_config = root / "tokenizer_config.json"
    if tokenizer_config.is_file():  # v6 reads max_seq_length from the tokenizer's model_max_length
        config = json.loads(tokenizer_config.read_text())
        config["model_max_length"] = length
        tokenizer_config.write_text(json.dumps(config, indent=2))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
