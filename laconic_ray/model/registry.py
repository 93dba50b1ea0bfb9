"""Released checkpoints known by hub id -> the encoder settings they were trained and evaluated with.

A checkpoint with a ``laconic.json`` needs no entry (its own settings win); an entry is what lets a released
model that has none (the LACONIC release, naver's and OpenSearch's SPLADE models) load with no other argument:
``SparseEncoder.from_pretrained("utahnlp/laconic-1b")``. Explicit arguments still override an entry.

Sources, read from the authors' code (not copied): LACONIC = github.com/zhichaoxu-shufe/laconic-sparse-retrieval
at a93c78f (the repository the paper links; its README lists the three hub ids); naver = github.com/naver/splade;
sentence-transformers = huggingface/sentence-transformers (how it loads a fill-mask model with no ST files).
"""

from __future__ import annotations

from typing import Any

# LACONIC (arXiv 2601.01684): Llama-3 with bidirectional attention (LlamaBiForMNTP, a LlamaForCausalLM with
# is_causal=False: the same weights AutoModelForCausalLM loads, made bidirectional by our attention mode).
#   prefixes "query: " / "passage: "  tevatron-tevatron-v1/src/tevatron/datasets/preprocessor.py, dataset.py
#   no BOS, no EOS (ADD_EOS_TOKEN=False) preprocessor.py; splade_scripts/encode_decoder_small_pyseismic.sh
#   max lengths 256 / 256 at encoding  splade_scripts/encode_decoder_{small,large}_pyseismic.sh
#   top 512 weights per vector, > 0    src/encode_splade_causal.py
#   max-pooled log1p(relu), no bias    tevatron/modeling/splade.py (_aggregate_sequence);
#                                      llm2vec/llm2vec/models/bidirectional_llama.py (lm_head bias=False)
# Released as merged models (src/merge_model.py merges the phase adapters): inferred, the hub's files were not
# readable from here.
_LACONIC = {
    "mode": "bidirectional",
    "query_prefix": "query: ",
    "passage_prefix": "passage: ",
    "query_max_length": 256,
    "passage_max_length": 256,
    "top_k": 512,
    "special_tokens": False,
    "logit_bias": 0.0,
}

# Classic SPLADE (masked LMs, symmetric: the same MLM encodes queries and documents): the tokenizer's
# [CLS] ... [SEP], no prefixes, max-pooled log1p(relu) (naver/splade: splade/models/transformer_rep.py). Lengths
# are those sentence-transformers gives a fill-mask model with no ST files, min(max_position_embeddings,
# tokenizer.model_max_length) = 512, so that vectors equal what its users get (naver trained with 256:
# conf/train/config/splade.yaml; pass passage_max_length=256 to match that).
_SPLADE = {
    "mode": "bidirectional",
    "query_prefix": "",
    "passage_prefix": "",
    "query_max_length": 512,
    "passage_max_length": 512,
    "special_tokens": True,
}

KNOWN: dict[str, dict[str, Any]] = {
    "utahnlp/laconic-1b": _LACONIC,  # Llama-3.2-1B base (splade_scripts/llama3_1b_*.sh)
    "utahnlp/laconic-3b": _LACONIC,  # Llama-3.2-3B
    "utahnlp/laconic-8b": _LACONIC,  # Llama-3.1-8B
    "naver/splade-v3": _SPLADE,  # BertForMaskedLM
    "naver/splade-cocondenser-ensembledistil": _SPLADE,  # BertForMaskedLM (conf/train/model/splade_cocondenser.yaml)
    "naver/splade-cocondenser-selfdistil": _SPLADE,
    "naver/splade_v2_distil": _SPLADE,  # DistilBertForMaskedLM
    "naver/splade_v2_max": _SPLADE,
    # OpenSearch's symmetric model: log1p(relu) like naver's (opensearch-py-ml sparse_encoding_model.py default)
    "opensearch-project/opensearch-neural-sparse-encoding-v2-distill": _SPLADE,
}

# OpenSearch's document-only models: documents through the MLM, queries inference-free (each distinct token
# weighted by the repo's idf.json; model cards' example code, e.g. huggingface.co/opensearch-project/
# opensearch-neural-sparse-encoding-doc-v2-distill README). doc-v3-distill adds a second log1p
# (sentence-transformers' Router docstring example: SpladePooling activation_function="log1p_relu").
# Not reproduced: the cards' zeroing of special-token ids in document vectors (sentence-transformers keeps them).
_OPENSEARCH_DOC = {**_SPLADE, "query_encoder": "idf"}
KNOWN.update(
    {
        "opensearch-project/opensearch-neural-sparse-encoding-doc-v2-distill": _OPENSEARCH_DOC,
        "opensearch-project/opensearch-neural-sparse-encoding-doc-v2-mini": _OPENSEARCH_DOC,
        "opensearch-project/opensearch-neural-sparse-encoding-doc-v3-distill": {
            **_OPENSEARCH_DOC,
            "activation": "log1p_log1p_relu",
        },
    }
)

# Document-only models whose query side is not known well enough to reproduce: refused by name, since
# encoding their queries with the MLM gives valid-looking, wrong vectors
DOC_ONLY = {
    "naver/splade-v3-doc",  # naver's SpladeDoc: binary query bag of words without PAD/CLS/SEP; hub layout unverified
    "opensearch-project/opensearch-neural-sparse-encoding-doc-v1",
}


def _key(name: str) -> str:
    return name.strip().rstrip("/")


def known_settings(name: str) -> dict[str, Any] | None:
    """The registry's settings for a hub id (``None`` for anything else, local folders included)."""
    entry = KNOWN.get(_key(name))
    return dict(entry) if entry is not None else None


def is_doc_only(name: str) -> bool:
    return _key(name) in DOC_ONLY
