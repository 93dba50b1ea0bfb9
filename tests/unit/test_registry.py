"""Released checkpoints by name: a hub cache laid out as the hub's repos are (tiny random weights, the real
config and tokenizer files' kinds), loaded offline by hub id in a fresh process, as a user's would be."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from laconic_ray.model import SparseEncoder
from laconic_ray.model.encoder import UnsupportedModel, check_model_source
from laconic_ray.model.registry import KNOWN
from tests.models import save_masked_lm, tiny_architecture, tokenizer_path

REPO = Path(__file__).resolve().parents[2]


def hub_snapshot(cache: Path, repo_id: str) -> Path:
    """The folder ``huggingface_hub`` resolves ``repo_id`` to offline (``refs/main`` -> a snapshot)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def released_laconic(folder: Path) -> None:
    """As the LACONIC release ships a model: merged Llama-3 weights saved by LlamaBiForMNTP (llm2vec's
    bidirectional LlamaForCausalLM), the Llama-3 tokenizer, no laconic.json."""
    encoder = SparseEncoder.from_config(tiny_architecture("llama", 128256), tokenizer_path("llama3"), seed=3)
    encoder.lm.config.architectures = ["LlamaBiForMNTP"]
    encoder.lm.save_pretrained(str(folder))
    encoder.tokenizer.save_pretrained(str(folder))
    assert not (folder / "laconic.json").exists()


SCRIPT = textwrap.dedent(
    """
    import dataclasses, json
    import numpy as np
    from sentence_transformers import SparseEncoder as STSparseEncoder
    from laconic_ray.model import SparseEncoder

    out = {}
    laconic = SparseEncoder.from_pretrained("utahnlp/laconic-1b")
    ids = laconic.tokenize(["what is aspirin"], "query")[0]
    out["laconic"] = {
        "settings": dataclasses.asdict(laconic.settings),
        "causal": bool(laconic.lm.config.is_causal),
        "first_token": laconic.tokenizer.decode(ids[:2]),
        "bos_in": laconic.tokenizer.bos_token_id in ids,
    }
    texts = ["Aspirin reduces the risk of heart attacks.", "short"]
    splade = SparseEncoder.from_pretrained("naver/splade-v3")
    theirs = STSparseEncoder("naver/splade-v3", device="cpu")
    out["splade"] = {
        "settings": dataclasses.asdict(splade.settings),
        "max_abs_diff": max(
            float(np.abs(splade.encode(texts, kind).toarray()
                  - encode(texts, convert_to_tensor=True).to_dense().numpy()).max())
            for kind, encode in (("query", theirs.encode_query), ("passage", theirs.encode_document))
        ),
    }
    doc_only = SparseEncoder.from_pretrained("opensearch-project/opensearch-neural-sparse-encoding-doc-v3-distill")
    query = doc_only.encode(["blood blood heart [SEP]"], "query")
    out["doc_only"] = {
        "settings": dataclasses.asdict(doc_only.settings),
        "query": dict(zip(doc_only.tokenizer.convert_ids_to_tokens(query.indices.tolist()), query.data.tolist())),
    }
    print(json.dumps(out))
    """
)


def test_released_checkpoints_load_by_hub_id_offline_with_their_settings(tmp_path):
    cache = tmp_path / "hub"
    released_laconic(hub_snapshot(cache, "utahnlp/laconic-1b"))
    save_masked_lm(hub_snapshot(cache, "naver/splade-v3"))
    # OpenSearch's layout: the MLM at the root, the query table beside it (a DistilBERT in the real repos)
    doc_only = Path(
        save_masked_lm(
            hub_snapshot(cache, "opensearch-project/opensearch-neural-sparse-encoding-doc-v3-distill"),
            "distilbert",
        )
    )
    (doc_only / "idf.json").write_text(json.dumps({"blood": 3.5, "heart": 1.25, "the": 0.1, "[SEP]": 0.0}))
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    laconic = out["laconic"]
    for key, value in KNOWN["utahnlp/laconic-1b"].items():
        assert laconic["settings"][key] == value, key
    assert laconic["causal"] is False and laconic["bos_in"] is False
    assert laconic["first_token"] == "query:"
    assert out["splade"]["settings"]["special_tokens"] is True
    assert out["splade"]["settings"]["passage_max_length"] == 512
    assert out["splade"]["max_abs_diff"] <= 1e-5
    doc_only = out["doc_only"]
    assert doc_only["settings"]["query_encoder"] == "idf"
    assert doc_only["settings"]["activation"] == "log1p_log1p_relu"
    # distinct tokens, each weighted by the table; [SEP] typed in a query is text, and weighs 0 anyway
    assert doc_only["query"] == {"blood": 3.5, "heart": 1.25}


def test_document_only_models_are_refused_by_name_before_any_download():
    name = "naver/splade-v3-doc"
    with pytest.raises(UnsupportedModel, match="document-only"):
        SparseEncoder.from_pretrained(name)
    with pytest.raises(UnsupportedModel, match=r"model: .*document-only"):
        check_model_source(name)


def test_registry_entries_are_valid_settings():
    from laconic_ray.model.encoder import EncoderSettings

    for name, entry in KNOWN.items():
        EncoderSettings(**entry)  # raises on a bad entry
        assert name.count("/") == 1, name
    assert json.dumps(KNOWN)  # plain data


def test_saved_checkpoints_carry_a_model_card_with_their_history_and_scores(tmp_path):
    from laconic_ray.model import card
    from tests.models import tiny_encoder

    first = {
        "phase": "phase1",
        "init": "random init",
        "data": "runs/pairs",
        "steps": 40,
        "lora": "r=8 alpha=16",
    }
    tiny_encoder().save_pretrained(tmp_path / "p1", training=first)
    again = SparseEncoder.from_pretrained(tmp_path / "p1")
    assert again.training_history == [first]
    again.save_pretrained(
        tmp_path / "p2", training={**first, "phase": "phase2", "init": str(tmp_path / "p1")}
    )
    card.record_evaluation(tmp_path / "p2", "scifact", "test", {"nDCG@10": 0.5})
    card.record_evaluation(tmp_path / "p2", "scifact", "test", {"nDCG@10": 0.68, "R@100": 0.9})  # replaces
    text = (tmp_path / "p2" / "README.md").read_text()
    saved = json.loads((tmp_path / "p2" / "laconic.json").read_text())
    assert text.startswith("---\nlibrary_name: laconic_ray") and '| mode | `"bidirectional"` |' in text
    assert "| phase1 | random init | runs/pairs | 40 | r=8 alpha=16 |" in text and "| phase2 |" in text
    assert "| scifact | test | nDCG@10 | 0.68 |" in text and "0.5 |" not in text
    assert saved["backbone"] == "causal" and len(saved["training"]) == 2 and len(saved["evaluations"]) == 1
    # a plain hub model's id becomes the card's base_model
    masked = SparseEncoder.from_pretrained(save_masked_lm(tmp_path / "m"))
    masked.base_model = "naver/splade-v3"
    masked.save_pretrained(tmp_path / "sp")
    assert "base_model: naver/splade-v3" in (tmp_path / "sp" / "README.md").read_text()
    assert "- splade" in (tmp_path / "sp" / "README.md").read_text()


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    """No hub here: huggingface_hub's client is replaced by one that records what it is asked to do."""
    import huggingface_hub

    from tests.models import tiny_encoder

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
            return type("Commit", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = tiny_encoder().push_to_hub("me/tiny-sparse", token="t")
    assert url == "https://huggingface.co/me/tiny-sparse/commit/abc"
    assert calls[:2] == [("token", "t"), ("create", "me/tiny-sparse", True, True)]
    uploaded = calls[2][2]
    assert {"README.md", "laconic.json", "config.json", "model.safetensors", "tokenizer.json"} <= set(
        uploaded
    )
