"""Term weights (issue 27): a fixed sqrt(idf) scale on every output weight, saved and loaded with the model."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from laconic_ray.config import ConfigError, ModelConfig, load_config
from laconic_ray.model import SparseEncoder, term_weights
from laconic_ray.model.build import build_encoder, resolve_term_weights
from laconic_ray.storage import StorageError
from tests.models import tiny_architecture, tiny_encoder, tokenizer_path


def test_idf_scale_is_bm25_idf_square_rooted():
    docs = {"a b": [0, 1], "a c c": [0, 2, 2], "a": [0]}  # id 0 in every document, 2 counted once in one
    scale, n = term_weights.idf_scale(lambda texts: [docs[t] for t in texts], list(docs), 5, batch=2)
    assert n == 3
    for token, df in {0: 3, 1: 1, 2: 1, 3: 0, 4: 0}.items():
        assert scale[token] == pytest.approx(math.sqrt(math.log1p((3 - df + 0.5) / (df + 0.5))), rel=1e-6)
    assert scale[0] < scale[1] == scale[2] < scale[3]
    with pytest.raises(ValueError, match="no documents"):
        term_weights.idf_scale(lambda texts: [], [], 5)


def test_an_encoder_with_term_weights_scales_every_weight_and_round_trips(tmp_path):
    plain = tiny_encoder()
    scale = torch.rand(plain.vocab_size) * 2
    scaled = tiny_encoder().set_term_weights(scale)
    texts = ["the flow of air over a swept wing", "a a a of of the"]
    expected = plain.encode_documents(texts).toarray() * scale.numpy()
    np.testing.assert_allclose(scaled.encode_documents(texts).toarray(), expected, rtol=1e-5, atol=1e-7)
    # the training path (forward) is scaled as well, and the LM's state dict is untouched by it
    batch = scaled.prepare(texts, "query")
    forward = scaled(batch.input_ids, batch.attention_mask, batch.pool_mask)
    np.testing.assert_allclose(forward.detach().numpy(), plain(batch.input_ids, batch.attention_mask, batch.pool_mask).detach().numpy() * scale.numpy(), rtol=1e-5, atol=1e-7)  # fmt: skip
    assert set(scaled.state_dict()) == set(plain.state_dict())
    folder = scaled.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "laconic.json").read_text())
    assert (
        saved["term_weights"] is True
        and "| term_weights | `true` |" in (tmp_path / "model" / "README.md").read_text()
    )
    loaded = SparseEncoder.from_pretrained(folder)
    torch.testing.assert_close(loaded.term_scale, scale, rtol=1e-5, atol=1e-6)  # 6 decimals in the file
    np.testing.assert_allclose(loaded.encode_documents(texts).toarray(), expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="entries, the vocabulary"):
        plain.set_term_weights(torch.ones(7))
    # the model id (what an index records of its encoder) covers the term weights: same LM, other scale,
    # another id; without any, the id is the LM weights' own, as before
    plain.save_pretrained(tmp_path / "plain")
    other = tiny_encoder().set_term_weights(scale * 2).save_pretrained(tmp_path / "other")
    ids = {
        json.loads((tmp_path / m / "laconic.json").read_text())["model_id"]
        for m in ("plain", "model", "other")
    }
    assert (
        len(ids) == 3
        and loaded.model_id == json.loads((tmp_path / "model" / "laconic.json").read_text())["model_id"]
    )
    assert SparseEncoder.from_pretrained(other).model_id != loaded.model_id


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('{"weights": [1.0, 2.0]}', "weights has 2 entries, the model's vocabulary 30522"),
        ("[1, 2", "not a term-weights file"),
        ('{"kind": "idf"}', "not a term-weights file"),
        ('{"weights": 3}', "weights has int entries"),
    ],
)
def test_a_bad_term_weights_file_is_named(tmp_path, body, error):
    path = tmp_path / "term_weights.json"
    path.write_text(body)
    with pytest.raises(ValueError, match=error) as caught:
        tiny_encoder().load_term_weights(str(tmp_path))
    assert str(path) in str(caught.value)


def test_a_negative_or_missing_term_weight_is_refused(tmp_path):
    weights = [1.0] * 30522
    weights[17] = -0.5
    (tmp_path / "term_weights.json").write_text(json.dumps({"weights": weights}))
    with pytest.raises(ValueError, match=r"weights\[17\] = -0.5: must be finite and >= 0"):
        tiny_encoder().load_term_weights(str(tmp_path / "term_weights.json"))
    with pytest.raises(StorageError, match=r"term weights: .*elsewhere/term_weights.json: no such file"):
        tiny_encoder().load_term_weights(str(tmp_path / "elsewhere"))


def test_idf_from_a_collection_is_computed_once_and_travels_with_the_model(tmp_path, data_root):
    model = ModelConfig(architecture=tiny_architecture(), tokenizer=tokenizer_path("bert-base-uncased"))
    asked = dataclasses.replace(model, term_weights=f"idf:{data_root / 'cranfield'}")
    resolved = resolve_term_weights(asked, str(tmp_path))
    path = tmp_path / "term_weights.json"
    assert resolved.term_weights == str(path)
    made = json.loads(path.read_text())
    assert made["documents"] == 1400 and made["corpus"] == str(data_root / "cranfield")
    weights = np.asarray(made["weights"])
    encoder = build_encoder(model)
    ids = encoder.tokenize(["the wing"], "passage")[0]
    the, wing = ids[-2], ids[-1]  # "the" is in nearly every Cranfield abstract, "wing" in some
    assert weights[the] < 0.3 < weights[wing] < made["max"] == made["max_possible"]
    path.write_text(json.dumps({**made, "weights": [1.0] * len(weights)}))  # same corpus: reused as is
    assert resolve_term_weights(asked, str(tmp_path)).term_weights == str(path)
    assert json.loads(path.read_text())["weights"][the] == 1.0
    other = dataclasses.replace(model, term_weights=f"idf:{data_root / 'cacm'}")  # another corpus: remade
    resolve_term_weights(other, str(tmp_path))
    assert json.loads(path.read_text())["documents"] == 3204
    # built straight from idf:<collection> (no file) gives the same scale as from the file
    direct = build_encoder(other)
    from_file = build_encoder(dataclasses.replace(model, term_weights=str(path)))
    torch.testing.assert_close(direct.term_scale, from_file.term_scale, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="idf:<collection> needs the collection"):
        dataclasses.replace(model, term_weights="idf:").validate()
    tiny = load_config(ModelConfig, "conf/model/tiny.yaml", ["term_weights=idf:cranfield"])
    assert tiny.term_weights == "idf:cranfield"  # a command line's value stays a string
