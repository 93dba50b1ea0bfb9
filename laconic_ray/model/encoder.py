"""SparseEncoder: a causal LM whose LM head, max-pooled over tokens, gives one weight per vocabulary id.

    w_v = log(1 + ReLU(max over pooled tokens t of logit_{t,v}))

Why the pooling is chunked: the logits of a batch are [batch, tokens, vocab]; with Llama-3's 128,256 ids a
batch of 64 passages of 192 tokens is 6.3 GB in fp32, and the naive computation took 16 minutes for SciFact on
a 2-core machine. The max is taken one vocabulary chunk at a time over the pooled tokens only, so peak memory
is O(tokens x chunk) and the [batch, vocab] result is all that is kept. Autograd stays cheap too: the max keeps
only its argmax indices and the matmul its (shared) inputs.

Padding is excluded *before* the max, never after: a pad token's logits are as large as anyone's and would
otherwise leak into every padded document. ReLU and log1p are monotone, so they commute with the max and are
applied to the pooled [batch, vocab] only, in fp32 whatever the compute dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from laconic_ray import storage
from laconic_ray.config import QUANTIZATIONS
from laconic_ray.model.attention import get_mode
from laconic_ray.model.tokenization import (
    Kind,
    ModelInputs,
    TextFormat,
    load_tokenizer,
    pad_batch,
    pad_token_id,
    tokenize,
)

log = logging.getLogger(__name__)

LACONIC_FILE = "laconic.json"
ADAPTER_FILE = "adapter_config.json"  # a PEFT adapter folder
IDF_FILE = "idf.json"  # document-only models' static query table: token -> weight
FORMAT_VERSION = 1
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass
class EncoderSettings:
    """What a checkpoint needs besides its weights to encode exactly as trained (saved as ``laconic.json``)."""

    mode: str = "bidirectional"
    query_prefix: str = "query: "
    passage_prefix: str = "passage: "
    query_max_length: int = 64
    passage_max_length: int = 192
    top_k: int | None = 512
    pooling: str = "max"
    # log1p_relu: log(1 + ReLU(x)) (SPLADE, LACONIC); log1p_log1p_relu: log(1 + log(1 + ReLU(x))), OpenSearch's
    # doc-only models (sentence-transformers' SpladePooling calls these "relu" and "log1p_relu")
    activation: str = "log1p_relu"
    # Add the tokenizer's own special tokens ([CLS] ... [SEP] for BERT). False for causal LMs (the no-BOS rule);
    # True for masked-LM SPLADE models, which were trained with them
    special_tokens: bool = False
    # model: queries through the LM like documents; idf: inference-free queries (document-only SPLADE models:
    # a query is its distinct token ids, each weighted by a static table, idf.json; no model run)
    query_encoder: str = "model"
    # Applied at load for inference (encode, search, serve, eval); never trained: none | bfloat16 | int8 (CPU:
    # torch's dynamic int8 on every Linear, the LM head included; CUDA: bitsandbytes 8-bit) | int4 (CUDA only:
    # bitsandbytes NF4). See SparseEncoder.quantize
    quantization: str = "none"
    # Subtracted from the pooled logits before ReLU. 0 for pretrained LLMs, whose LM heads already give most
    # ids a negative logit. A randomly initialised model gives every id a positive max logit (dense vectors whose
    # huge dot products saturate InfoNCE and collapse training); a small offset keeps only the ids that stand out,
    # which are the text's own tokens (the lexical prior of tied embeddings).
    logit_bias: float = 0.0
    # Every weight times a fixed per-id scale (term_weights.json beside the model, model/term_weights.py):
    # sqrt(idf) of a corpus, so that a query-document product carries the idf once. Not trained.
    term_weights: bool = False

    def __post_init__(self) -> None:
        get_mode(self.mode)
        if self.pooling != "max" or self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unsupported pooling/activation {self.pooling}/{self.activation} (pooling: max; activation: "
                f"one of {sorted(ACTIVATIONS)})"
            )
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        if self.query_encoder not in ("model", "idf"):
            raise ValueError(f"query_encoder must be model or idf, got {self.query_encoder!r}")
        if self.query_max_length <= 0 or self.passage_max_length <= 0:
            raise ValueError("max lengths must be > 0")
        if self.top_k is not None and self.top_k <= 0:
            raise ValueError(f"top_k must be > 0 or None, got {self.top_k}")

    @property
    def text_format(self) -> TextFormat:
        return TextFormat(
            self.query_prefix,
            self.passage_prefix,
            self.query_max_length,
            self.passage_max_length,
            self.special_tokens,
        )

    def to_json(self, **extra: Any) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **dataclasses.asdict(self), **extra}, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = LACONIC_FILE) -> EncoderSettings:
        raw = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in raw.items() if k in names})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: invalid settings ({e})") from None


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}") from None


def _segment_max(flat, weight, bias, bounds, chunk):
    """Per-row layout: each segment (a text's pooled rows ``flat[lo:hi]``) times each vocabulary chunk is one
    small matmul whose [rows, chunk] logits stay in cache and are reduced at once. The loop runs over chunks,
    then segments, so a chunk of the LM head (chunk x hidden) is reused from cache by every segment. Measured
    3x faster than one [n_pooled, chunk] matmul per chunk followed by the max, which streams the logits
    through memory (tiny preset, 64 passages, 2 cores)."""
    projections = [
        (start, functools.partial(
            torch.nn.functional.linear,
            weight=weight[start : start + chunk],
            bias=None if bias is None else bias[start : start + chunk],
        ))
        for start in range(0, weight.shape[0], chunk)
    ]  # fmt: skip
    return segment_max(flat, projections, bounds, weight.shape[0])


def segment_max(flat, projections, bounds, vocab):
    """``_segment_max`` over any projections: ``(first id, rows -> [rows, ids] logits)`` per vocabulary chunk
    (an int8 LM head is a list of quantized Linear chunks)."""
    values = torch.full((len(bounds) - 1, vocab), -torch.inf, dtype=flat.dtype, device=flat.device)
    spans = [(i, lo, hi) for i, (lo, hi) in enumerate(itertools.pairwise(bounds)) if hi > lo]
    for start, project in projections:
        for i, lo, hi in spans:
            logits = project(flat[lo:hi])
            torch.amax(logits, dim=0, out=values[i, start : start + logits.shape[1]])
    return values


def _segment_argmax(flat, weight, bounds, text, col):
    """The row of ``flat`` that gave each (text, id) its max, for the given entries only (sorted by text):
    one [rows, entries] matmul per text. The bias is the same for every row of an id, so it cannot change
    the argmax. Costs ~ (share of non-zero gradients) x the forward."""
    rows = torch.full_like(col, -1)
    counts = torch.bincount(text, minlength=len(bounds) - 1).tolist()
    offset = 0
    for (lo, hi), n in zip(itertools.pairwise(bounds), counts, strict=True):
        if n and hi > lo:
            ids = col[offset : offset + n]
            rows[offset : offset + n] = (flat[lo:hi] @ weight[ids].T).argmax(dim=0) + lo
        offset += n
    return rows


def _dense_max(flat, weight, bias, pool_mask, chunk, want_argmax):
    """Dense layout: [batch, tokens, chunk] logits per chunk with non-pooled positions at ``-inf``, one max
    kernel per chunk (a per-text loop over 2,048 passages would be launch-bound on a GPU). The argmax is kept
    from the forward here: on a GPU it costs nothing extra, recomputing it per text would."""
    batch, tokens = pool_mask.shape
    hidden = flat.view(batch, tokens, -1)
    masked = ~pool_mask.unsqueeze(-1)
    offsets = (torch.arange(batch, device=flat.device) * tokens).view(batch, 1)
    values, argmaxes = [], []
    for start in range(0, weight.shape[0], chunk):
        b = None if bias is None else bias[start : start + chunk]
        logits = torch.nn.functional.linear(hidden, weight[start : start + chunk], b).masked_fill_(
            masked, -torch.inf
        )
        best, where = logits.max(dim=1)
        values.append(best)
        if want_argmax:  # a row of `flat`; -1 where the text has no pooled position
            argmaxes.append(torch.where(torch.isinf(best), -1, where + offsets).to(torch.int32))
    return torch.cat(values, dim=1), torch.cat(argmaxes, dim=1) if want_argmax else None


class PooledProjection(torch.autograd.Function):
    """``max over each text's pooled rows of (rows @ weight.T + bias)`` -> [texts, vocab] fp32.

    Why a custom autograd function: the max sends each (text, id) gradient to exactly one row, and the
    activation ``log1p(relu(. - bias))`` leaves most ids with no gradient at all. Plain autograd would still
    run two dense [rows, vocab] x hidden matmuls in backward (twice the forward's cost) and keep the logits
    (or their argmax per chunk) alive. Here backward touches the non-zero gradient entries only:
    O(nnz x hidden) plus, in the per-row layout, finding their argmax rows again (O(nnz x rows x hidden)).
    Tiny preset on 2 cores at 5% non-zero weights: forward + backward 2.3x faster than plain autograd.
    """

    @staticmethod
    def forward(ctx, flat, weight, bias, layout, chunk):
        kind, plan = layout
        train = any(ctx.needs_input_grad[:3])
        argmax = None
        if kind == "segments":
            values = _segment_max(flat, weight, bias, plan, chunk)
        else:
            values, argmax = _dense_max(flat, weight, bias, plan, chunk, train)
        if train:
            ctx.save_for_backward(flat, weight, argmax)
            ctx.bounds = plan if kind == "segments" else None
            ctx.has_bias = bias is not None
            ctx.chunk = chunk
        return values.float()

    @staticmethod
    def backward(ctx, grad):
        flat, weight, argmax = ctx.saved_tensors
        text, col = grad.nonzero(as_tuple=True)
        if argmax is None:
            rows = _segment_argmax(flat, weight, ctx.bounds, text, col)
        else:
            rows = argmax[text, col].long()
        keep = rows >= 0  # a text with no pooled position has no source row
        col, rows = col[keep], rows[keep]
        g = grad[text[keep], col].to(flat.dtype).unsqueeze(1)
        grad_flat = grad_weight = grad_bias = None
        # in slices of `chunk` entries: each materialises [chunk, hidden], so the backward's peak is bounded by
        # vocab_chunk like the forward's, not by texts x active ids (millions of entries on a GPU batch)
        if ctx.needs_input_grad[0]:
            grad_flat = torch.zeros_like(flat)
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros_like(weight)
        for start in range(0, col.shape[0], ctx.chunk):
            c, r, gs = (
                col[start : start + ctx.chunk],
                rows[start : start + ctx.chunk],
                g[start : start + ctx.chunk],
            )
            if grad_flat is not None:
                grad_flat.index_add_(0, r, gs * weight[c])
            if grad_weight is not None:
                grad_weight.index_add_(0, c, gs * flat[r])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = weight.new_zeros(weight.shape[0]).index_add_(0, col, g.squeeze(1))
        return grad_flat, grad_weight, grad_bias, None, None


# max_pool_logits's per_row argument for each SparseEncoder.pooling_layout
POOLING_LAYOUTS: dict[str, bool | None] = {"auto": None, "per_row": True, "dense": False}


def max_pool_logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pool_mask: torch.Tensor,
    chunk: int = 2048,
    per_row: bool | None = None,
) -> torch.Tensor:
    """``max over pooled t of (hidden[b, t] @ weight.T + bias)`` -> [batch, vocab] fp32, chunked over vocab.

    Two layouts of the same computation (``per_row=None`` picks by device), both with the sparse backward of
    :class:`PooledProjection`:

    * per row (CPU): only pooled positions are projected. They are gathered into one [n_pooled, hidden]
      matrix (padding and the first copy of an echo input never reach the LM head); each (text, vocabulary
      chunk) pair is one cache-sized matmul and its max.
    * dense (GPU): [batch, tokens, chunk] logits with non-pooled positions set to ``-inf``, one max kernel
      per chunk.

    Peak extra memory is one chunk of logits, never [batch, tokens, vocab]. Rows with no pooled position (an
    empty text) stay ``-inf``, which ReLU turns into all-zero weights.
    """
    if chunk <= 0:
        raise ValueError(f"vocab chunk must be > 0, got {chunk}")
    if per_row is None:
        per_row = hidden.device.type == "cpu"
    if per_row:
        flat = hidden[pool_mask]  # [n_pooled, hidden], rows in order (boolean indexing is row-major)
        layout = ("segments", [0, *torch.cumsum(pool_mask.sum(dim=1), 0).tolist()])
    else:
        flat = hidden.reshape(-1, hidden.shape[-1])
        layout = ("dense", pool_mask)
    return PooledProjection.apply(flat, weight, bias, layout, chunk)


def max_pool_logits_naive(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, pool_mask: torch.Tensor
) -> torch.Tensor:
    """The reference: materialise [batch, tokens, vocab]. Tests and benchmarks only."""
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    return logits.masked_fill(~pool_mask.unsqueeze(-1), float("-inf")).amax(dim=1)


ACTIVATIONS = ("log1p_relu", "log1p_log1p_relu")


def activate(pooled: torch.Tensor, bias: float = 0.0, activation: str = "log1p_relu") -> torch.Tensor:
    weights = torch.log1p(torch.relu(pooled - bias)) if bias else torch.log1p(torch.relu(pooled))
    return torch.log1p(weights) if activation == "log1p_log1p_relu" else weights


def dense_to_csr(weights: torch.Tensor, top_k: int | None) -> sp.csr_matrix:
    """[batch, vocab] non-negative weights -> CSR keeping each row's ``top_k`` largest (> 0), indices sorted."""
    weights = weights.detach().float().cpu()
    n, vocab = weights.shape
    if top_k is not None and top_k < vocab:
        values, indices = torch.topk(weights, top_k, dim=1)  # ties: torch picks any; rare for float logits
        indices, order = torch.sort(indices, dim=1)
        values = torch.gather(values, 1, order)
        keep = values > 0
        counts = keep.sum(dim=1)
        data, cols = values[keep], indices[keep]
    else:
        keep = weights > 0
        counts = keep.sum(dim=1)
        data, cols = weights[keep], keep.nonzero()[:, 1]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts.numpy(), out=indptr[1:])
    return sp.csr_matrix(
        (data.numpy().astype(np.float32), cols.numpy().astype(np.int32), indptr), shape=(n, vocab)
    )


class SparseEncoder(nn.Module):
    """A causal LM turned into a learned sparse encoder (LACONIC / CSPLADE).

    Build with :meth:`from_pretrained` (a laconic checkpoint, a plain HF causal-LM dir or hub id, local or
    ``s3://``) or :meth:`from_config` (random init). ``forward`` maps a padded batch to [batch, vocab] weights;
    :meth:`encode_queries` / :meth:`encode_documents` map texts to a CSR matrix.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        settings: EncoderSettings | None = None,
        vocab_chunk: int = 2048,
        pooling_layout: str = "auto",
    ):
        super().__init__()
        self.settings = settings or EncoderSettings()
        self.mode = get_mode(self.settings.mode)
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_chunk = vocab_chunk
        if pooling_layout not in POOLING_LAYOUTS:
            raise ValueError(
                f"pooling_layout must be one of {sorted(POOLING_LAYOUTS)}, got {pooling_layout!r}"
            )
        self.pooling_layout = pooling_layout  # max_pool_logits's layout: auto picks by device
        self.pad_id = pad_token_id(tokenizer)
        # sha256 of the saved weights (laconic.json's model_id): what vectors and indexes record, so that a
        # query encoder can be matched with the index it searches. None until saved, or for plain HF models.
        self.model_id: str | None = None
        # provenance for laconic.json and the model card: the hub id it descends from, its training phases
        self.base_model: str | None = None
        self.training_history: list[dict[str, Any]] = []
        self.query_weights: torch.Tensor | None = None  # [vocab] float32 when settings.query_encoder == "idf"
        # [vocab] float32 when settings.term_weights: not a buffer (state dicts and FSDP stay the LM's own);
        # copied to the pooled logits' device on first use
        self.term_scale: torch.Tensor | None = None
        self._term_scale_on: torch.Tensor | None = None
        self.term_weights_meta: dict[str, Any] = {}  # how the scale was made (corpus, documents, formula)
        self.quantized = "none"  # what quantize() applied (settings.quantization is what was asked for)
        self._head_chunks: list[tuple[int, nn.Module]] | None = None  # an int8 LM head, chunk by chunk
        self.masked = is_masked_lm(self.lm)
        if self.masked:  # classic SPLADE: bidirectional by construction, padded with its own [PAD]
            if self.settings.mode != "bidirectional":
                raise UnsupportedModel(
                    f"mode={self.settings.mode}: a masked LM ({type(self.lm).__name__}) encodes bidirectionally "
                    "only (echo and causal are modes of causal LMs)"
                )
            expose_head_input(self.lm)
            if tokenizer.pad_token_id is not None:
                self.pad_id = int(tokenizer.pad_token_id)
        else:
            self.mode.apply(self.lm)
        if len(tokenizer) > self.vocab_size:
            raise ValueError(
                f"tokenizer has {len(tokenizer)} ids but the model's LM head only {self.vocab_size}"
            )

    # ------------------------------------------------------------------------------------------ structure

    @property
    def lm(self) -> nn.Module:
        """The Hugging Face LM, causal or masked (unwrapped from peft when LoRA is on; LoRA layers live
        inside it)."""
        return self.model.get_base_model() if self.has_lora else self.model

    @property
    def has_lora(self) -> bool:
        # a peft wrapper, not just a `peft_config` attribute (transformers sets one on models it loaded an
        # adapter into, which have no get_base_model)
        return hasattr(self.model, "peft_config") and hasattr(self.model, "get_base_model")

    @property
    def lm_head(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    @property
    def vocab_size(self) -> int:
        return int(self.lm_head.weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    # -------------------------------------------------------------------------------------------- forward

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the LM head projects to vocabulary logits, [batch, seq, hidden]: a causal LM's last hidden states
        (after the final norm); a masked LM's after its MLM head's transform (dense, activation, norm), the
        model's own forward ending at :class:`HeadInput`."""
        if self.masked:
            return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
        decoder = self.lm.get_decoder()
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor
    ) -> torch.Tensor:
        """[batch, vocab] fp32 weights ``log(1 + ReLU(max over pooled tokens of the LM-head logits))``."""
        if self.quantized in ("int8", "int4") and torch.is_grad_enabled():
            raise RuntimeError(
                f"a {self.quantized}-quantized encoder encodes only; train the unquantized model"
            )
        return self.activate(self.pool(self.hidden_states(input_ids, attention_mask), pool_mask))

    def pool(self, hidden: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        """Max over each text's pooled positions of the LM-head logits -> [batch, vocab] fp32."""
        if self._head_chunks is not None:  # int8 head: quantized Linear chunks, per-row layout
            flat = hidden[pool_mask]
            bounds = [0, *torch.cumsum(pool_mask.sum(dim=1), 0).tolist()]
            return segment_max(flat, self._head_chunks, bounds, self.vocab_size).float()
        head = self.lm_head
        return max_pool_logits(
            hidden,
            head.weight,
            getattr(head, "bias", None),
            pool_mask,
            self.vocab_chunk,
            POOLING_LAYOUTS[self.pooling_layout],
        )

    def quantize(self, method: str) -> SparseEncoder:
        """Quantize for inference, in place. ``bfloat16``: every weight in bf16 (pooling still reduces in
        fp32). ``int8`` on CPU: torch's dynamic int8 (fbgemm/onednn kernels; weights per tensor, activations
        quantized per call) on every Linear of the LM, and on the LM head as chunks of ``vocab_chunk`` rows so
        that pooling stays chunked; measured 4-8x faster than fp32 Linears at Llama-3-1B widths on one core,
        where torchao's int8 (no torch.compile) was 3.5x slower than fp32 (benchmarks/quantization.py). On
        CUDA, int8/int4 are applied at load by bitsandbytes (``from_pretrained(quantization=...)``)."""
        if method not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {method!r}")
        if method == "none" or method == self.quantized:
            return self
        if self.quantized != "none":
            raise RuntimeError(
                f"already quantized ({self.quantized}); load the checkpoint again for {method}"
            )
        if self.has_lora:
            raise RuntimeError("merge_lora() before quantizing")
        if method == "bfloat16":
            self.to(torch.bfloat16)
        elif self.device.type != "cpu" or method == "int4":
            raise ValueError(
                f"quantization={method} on {self.device.type}: int8 is built for CPUs here (torch's dynamic int8), "
                "GPU int8 and int4 through bitsandbytes at load time: SparseEncoder.from_pretrained(..., "
                f"quantization='{method}', device='cuda')"
            )
        else:
            self._quantize_int8_cpu()
        self.quantized = method
        self.settings = dataclasses.replace(self.settings, quantization=method)
        return self

    def _quantize_int8_cpu(self) -> None:
        from torch.ao.quantization import quantize_dynamic

        self.float()
        head = self.lm_head
        names = {name for name, m in self.lm.named_modules() if type(m) is nn.Linear and m is not head}
        with warnings.catch_warnings():  # torch marks its quantized tensor types deprecated (torchao: slower)
            warnings.simplefilter("ignore")
            quantize_dynamic(self.lm, qconfig_spec=names, dtype=torch.qint8, inplace=True)
            chunks = []
            for start in range(0, self.vocab_size, self.vocab_chunk):
                rows = head.weight[start : start + self.vocab_chunk].detach()
                bias = getattr(head, "bias", None)
                linear = nn.Linear(rows.shape[1], rows.shape[0], bias=bias is not None)
                with torch.no_grad():
                    linear.weight.copy_(rows)
                    if bias is not None:
                        linear.bias.copy_(bias[start : start + self.vocab_chunk])
                chunks.append(
                    (start, quantize_dynamic(nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8))
                )
        self._head_chunks = chunks
        # the embedding table (the head's, when tied) is only looked up now: bf16 halves its bytes (Llama-3-1B:
        # 1 GB -> 0.5 GB) and the looked-up rows are cast back to fp32 for the int8 layers
        table = self.lm.get_input_embeddings()
        lookup = Bf16Embedding(table.weight.detach().to(torch.bfloat16), table.padding_idx)
        self.lm.set_input_embeddings(lookup)
        if head.weight is table.weight:
            head.weight = lookup.weight

    def activate(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled logits [batch, vocab] -> weights, under this encoder's logit bias, activation and term
        weights."""
        weights = activate(pooled, self.settings.logit_bias, self.settings.activation)
        if self.term_scale is None:
            return weights
        scale = self._term_scale_on
        if scale is None or scale.device != weights.device or scale.dtype != weights.dtype:
            scale = self._term_scale_on = self.term_scale.to(weights.device, weights.dtype)
        return weights * scale[: weights.shape[-1]]

    def load_term_weights(self, uri: str, options: storage.StorageOptions | None = None) -> SparseEncoder:
        """The scale in ``uri`` (a term_weights.json or the folder holding one) on every weight."""
        from laconic_ray.model import term_weights

        table, meta = term_weights.read(uri, self.vocab_size, options)
        self.term_weights_meta = meta
        return self.set_term_weights(table)

    def set_term_weights(self, scale: torch.Tensor | None) -> SparseEncoder:
        """Apply (or with None, remove) a fixed per-id scale on every weight; recorded in the settings."""
        if scale is not None and scale.shape != (self.vocab_size,):
            raise ValueError(f"term weights: {tuple(scale.shape)} entries, the vocabulary {self.vocab_size}")
        self.term_scale = None if scale is None else scale.detach().float().cpu()
        self._term_scale_on = None
        self.settings = dataclasses.replace(self.settings, term_weights=scale is not None)
        return self

    # ------------------------------------------------------------------------------------------- encoding

    def prepare(self, texts: Sequence[str], kind: Kind) -> ModelInputs:
        """Texts -> a padded batch under the tokenization contract and this encoder's attention mode."""
        return self.prepare_ids(tokenize(self.tokenizer, texts, kind, self.settings.text_format))

    def prepare_ids(self, token_ids: Sequence[Sequence[int]]) -> ModelInputs:
        laid_out = [self.mode.layout(ids) for ids in token_ids]
        return pad_batch([s for s, _ in laid_out], [p for _, p in laid_out], self.pad_id)

    def tokenize(self, texts: Sequence[str], kind: Kind) -> list[list[int]]:
        return tokenize(self.tokenizer, texts, kind, self.settings.text_format)

    @torch.inference_mode()
    def encode_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        *,
        batch_size: int = 32,
        top_k: int | None = None,
        stats: dict[str, float] | None = None,
        threads: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> sp.csr_matrix:
        """Encode pre-tokenized texts. Batches are formed longest-first so that padding stays small; rows come
        back in input order. ``stats`` (if given) accumulates seconds spent per step (summed over threads)
        and token counts; ``model_cpu`` is the CPU time of the model steps, next to their wall time.
        ``on_batch(n)`` is called after each batch of ``n`` texts (progress).

        On CPU, ``threads`` batches run at once, each on one torch thread (default: torch's thread count).
        For models this size that beats one batch at a time on all threads by 1.5-1.7x (measured on 2 cores,
        tiny preset): a batch's matmuls are too small to split well, every split waits for its slowest
        thread, and independent batches keep each core busy. torch's intra-op thread count is 1 for the
        duration of the call (it is process-wide) and restored afterwards.
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        was_training = self.training
        self.eval()
        order = np.argsort([-len(t) for t in token_ids], kind="stable")
        batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        threads = 1 if self.device.type != "cpu" else (threads or torch.get_num_threads())
        threads = max(1, min(threads, len(batches)))
        results: list[tuple[sp.csr_matrix, dict[str, float]]] = []
        intra_op = torch.get_num_threads()
        try:
            if threads == 1:
                done = (self._encode_batch([token_ids[i] for i in chosen], top_k) for chosen in batches)
                self._collect(done, batches, results, on_batch)
            else:
                from concurrent.futures import ThreadPoolExecutor

                torch.set_num_threads(1)
                with ThreadPoolExecutor(threads, thread_name_prefix="laconic-encode") as pool:
                    done = pool.map(
                        lambda chosen: self._encode_batch([token_ids[i] for i in chosen], top_k), batches
                    )
                    self._collect(done, batches, results, on_batch)
        finally:
            torch.set_num_threads(intra_op)
            self.train(was_training)
        if stats is not None:
            for _, batch_stats in results:
                for key, value in batch_stats.items():
                    stats[key] = stats.get(key, 0) + value
        if not results:
            return sp.csr_matrix((0, self.vocab_size), dtype=np.float32)
        stacked = sp.vstack([block for block, _ in results], format="csr")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return stacked[inverse]

    @staticmethod
    def _collect(
        done: Iterable, batches: list, results: list, on_batch: Callable[[int], None] | None
    ) -> None:
        for chosen, result in zip(batches, done, strict=False):
            results.append(result)
            if on_batch is not None:
                on_batch(len(chosen))

    def _encode_batch(
        self, token_ids: Sequence[Sequence[int]], top_k: int | None
    ) -> tuple[sp.csr_matrix, dict[str, float]]:
        """One batch -> (CSR rows, step seconds and token counts). Safe to run from several threads."""
        with torch.inference_mode():  # thread-local: worker threads need their own
            c0 = time.thread_time()
            t0 = time.perf_counter()
            inputs = self.prepare_ids(token_ids).to(self.device)
            t1 = time.perf_counter()
            hidden = self.hidden_states(inputs.input_ids, inputs.attention_mask)
            t2 = time.perf_counter()
            block = dense_to_csr(self.activate(self.pool(hidden, inputs.pool_mask)), top_k)
            t3 = time.perf_counter()
        return block, {
            "pad_s": t1 - t0,
            "forward_s": t2 - t1,
            "pool_s": t3 - t2,
            # this thread's CPU seconds over pad + forward + pool; on CPU with one torch thread per batch (the
            # batch-parallel path) it falls short of their wall time by the time the thread waited for a core
            "model_cpu": time.thread_time() - c0,
            "tokens": inputs.num_tokens,
            "padded_tokens": inputs.input_ids.numel(),
        }

    def encode(
        self,
        texts: Sequence[str],
        kind: Kind,
        *,
        batch_size: int = 32,
        top_k: int | None = None,
        stats: dict[str, float] | None = None,
        threads: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> sp.csr_matrix:
        if kind == "query" and self.settings.query_encoder == "idf":
            return self._encode_static(texts, top_k)
        t0 = time.perf_counter()
        ids = self.tokenize(texts, kind)
        if stats is not None:
            stats["tokenize_s"] = stats.get("tokenize_s", 0.0) + time.perf_counter() - t0
        return self.encode_ids(
            ids, batch_size=batch_size, top_k=top_k, stats=stats, threads=threads, on_batch=on_batch
        )

    def _encode_static(self, texts: Sequence[str], top_k: int | None) -> sp.csr_matrix:
        """Inference-free queries: each distinct token id of ``prefix + text`` (no special tokens, as
        sentence-transformers' SparseStaticEmbedding tokenizes) weighted by the static table."""
        if self.query_weights is None:
            raise RuntimeError("query_encoder=idf but no query table is loaded (idf.json)")
        ids = self.tokenizer(
            [self.settings.query_prefix + t for t in texts],
            add_special_tokens=False,
            truncation=True,
            max_length=self.settings.query_max_length,
        )["input_ids"]
        table = self.query_weights.numpy()
        indptr, indices, data = [0], [], []
        for row in ids:
            present = np.unique(np.asarray(row, dtype=np.int64))  # sorted
            weights = table[present]
            keep = np.flatnonzero(weights > 0)
            if top_k is not None and len(keep) > top_k:  # the heaviest, ids kept in ascending order
                keep = np.sort(keep[np.argsort(-weights[keep], kind="stable")[:top_k]])
            indices.append(present[keep])
            data.append(weights[keep])
            indptr.append(indptr[-1] + len(keep))
        return sp.csr_matrix(
            (np.concatenate([np.zeros(0, np.float32), *data]).astype(np.float32),
             np.concatenate([np.zeros(0, np.int64), *indices]).astype(np.int32), np.asarray(indptr)),
            shape=(len(ids), self.vocab_size),
        )  # fmt: skip

    def encode_queries(
        self, texts: Sequence[str], batch_size: int = 32, top_k: int | None = None
    ) -> sp.csr_matrix:
        """Queries -> CSR [n, vocab]; ``top_k=None`` keeps every weight > 0."""
        return self.encode(texts, "query", batch_size=batch_size, top_k=top_k)

    def encode_documents(
        self, texts: Sequence[str], batch_size: int = 32, top_k: int | None = None
    ) -> sp.csr_matrix:
        """Passages -> CSR [n, vocab]; the pipeline passes ``top_k=settings.top_k`` (512 by default)."""
        return self.encode(texts, "passage", batch_size=batch_size, top_k=top_k)

    # ------------------------------------------------------------ sentence-transformers' SparseEncoder API

    def encode_query(
        self,
        sentences: str | Sequence[str],
        *,
        batch_size: int = 32,
        max_active_dims: int | None = None,
        output: str = "torch",
    ):
        """As sentence-transformers' ``SparseEncoder.encode_query``: one text -> one [vocab] vector, a list ->
        [n, vocab]; ``output`` ``torch`` (sparse COO, theirs by default), ``scipy`` (CSR, always 2-D) or
        ``dense``; ``max_active_dims`` keeps each vector's largest weights."""
        return self._encode_as(sentences, "query", batch_size, max_active_dims, output)

    def encode_document(
        self,
        sentences: str | Sequence[str],
        *,
        batch_size: int = 32,
        max_active_dims: int | None = None,
        output: str = "torch",
    ):
        """As :meth:`encode_query`, for documents (passage prefix and length)."""
        return self._encode_as(sentences, "passage", batch_size, max_active_dims, output)

    def _encode_as(self, sentences, kind: Kind, batch_size: int, max_active_dims: int | None, output: str):
        if output not in ("torch", "scipy", "dense"):
            raise ValueError(f"output must be torch, scipy or dense, got {output!r}")
        single = isinstance(sentences, str)
        csr = self.encode([sentences] if single else list(sentences), kind, batch_size=batch_size,
                          top_k=max_active_dims)  # fmt: skip
        if output == "scipy":
            return csr
        coo = csr.tocoo()
        tensor = torch.sparse_coo_tensor(  # CSR rows give sorted, unique (row, id) pairs: valid and coalesced
            np.vstack([coo.row, coo.col]), torch.from_numpy(coo.data), csr.shape, is_coalesced=True,
            check_invariants=False,
        )  # fmt: skip
        if single:
            tensor = tensor[0].coalesce()
        return tensor.to_dense() if output == "dense" else tensor

    def decode(self, embeddings, top_k: int | None = None) -> list:
        """Vector(s) -> their tokens as strings with weights, heaviest first: a list of ``(token, weight)``
        for one vector (1-D, or one row), a list of such lists for a matrix. Takes what the encode methods
        return (torch sparse or dense, scipy)."""
        matrix, single = _as_csr(embeddings)
        decoded = []
        for i in range(matrix.shape[0]):
            row = matrix[i]
            order = np.argsort(-row.data, kind="stable")[:top_k]
            tokens = self.tokenizer.convert_ids_to_tokens(row.indices[order].tolist())
            decoded.append(list(zip(tokens, row.data[order].tolist(), strict=True)))
        return decoded[0] if single else decoded

    @staticmethod
    def similarity(a, b) -> torch.Tensor:
        """Dot products [n_a, n_b] (SPLADE's, and sentence-transformers' for SparseEncoder) of two sets of
        vectors in any format the encode methods return."""
        left, _ = _as_csr(a)
        right, _ = _as_csr(b)
        return torch.from_numpy(np.asarray((left @ right.T).todense(), dtype=np.float32))

    # ---------------------------------------------------------------------------------- training helpers

    def add_lora(
        self,
        r: int = 32,
        alpha: int = 64,
        dropout: float = 0.1,
        target_modules: Sequence[str] = DEFAULT_LORA_TARGETS,
    ) -> None:
        """Wrap the LM with fresh LoRA adapters (peft); afterwards only adapter weights require grad."""
        from peft import LoraConfig, get_peft_model

        if self.has_lora:
            raise RuntimeError("LoRA is already on; merge_lora() first to start a fresh adapter")
        targets: list[str] | str = list(target_modules)
        if self.masked and tuple(target_modules) == DEFAULT_LORA_TARGETS:
            targets = "all-linear"  # the Llama names are not a BERT's: every Linear but the output projection
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
        self.model = get_peft_model(self.model, config)

    def merge_lora(self) -> None:
        """Fold the adapters into the base weights (LACONIC merges after phase 1, then adds a fresh LoRA)."""
        if self.has_lora:
            self.model = self.model.merge_and_unload()

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer in backward instead of storing its activations (transformers 5.x API)."""
        self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    # ----------------------------------------------------------------------------------------- save/load

    def save_pretrained(
        self,
        uri: str | os.PathLike,
        options: storage.StorageOptions | None = None,
        max_shard_size: str = "5GB",
        training: dict[str, Any] | None = None,
    ) -> str:
        """HF weights (safetensors, in files of at most ``max_shard_size`` with an index, as the hub's) +
        tokenizer + a model card (README.md) + ``laconic.json`` (written last) to a local dir or ``s3://``.
        ``training``: the phase that made these weights (phase, init, data, steps, lora), added to the
        history the card shows."""
        if self.has_lora:
            raise RuntimeError("save_pretrained needs merged weights: call merge_lora() first")
        if self.quantized in ("int8", "int4"):
            raise RuntimeError(
                f"a {self.quantized}-quantized encoder is not saved: save the full-precision checkpoint with "
                f"quantization='{self.quantized}' in its settings (applied at load)"
            )
        if training is not None:
            self.training_history = [*self.training_history, training]
        uri = os.fspath(uri)
        if storage.is_remote(uri):
            with tempfile.TemporaryDirectory() as tmp:
                self.save_pretrained(tmp, max_shard_size=max_shard_size)
                storage.upload_dir(tmp, uri, options, last=LACONIC_FILE)
            return uri
        os.makedirs(uri, exist_ok=True)
        self.lm.save_pretrained(uri, safe_serialization=True, max_shard_size=max_shard_size)
        self.tokenizer.save_pretrained(uri)
        if self.term_scale is not None:  # before the digest, which covers it
            from laconic_ray.model import term_weights

            term_weights.write(uri, self.term_scale.numpy(), self.term_weights_meta)
        self.model_id = weights_digest(uri)
        extra = {
            "vocab_size": self.vocab_size,
            "model_type": self.lm.config.model_type,
            "model_id": self.model_id,
            "backbone": "masked" if self.masked else "causal",
            "base_model": self.base_model,
            "training": self.training_history,
        }
        from laconic_ray.model import card

        if self.query_weights is not None:  # the static query table, as document-only models ship it
            tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
            table = {t: float(w) for t, w in zip(tokens, self.query_weights.tolist(), strict=False) if w > 0}
            storage.write_bytes(os.path.join(uri, IDF_FILE), json.dumps(table).encode())
        elif self.masked and self.term_scale is None:  # loadable by sentence-transformers too (which has no
            # per-id output scale: a model with term weights is ours only)
            from laconic_ray.model import st_format

            st_format.write_files(uri, self.settings, self.vocab_size)
        laconic = self.settings.to_json(**extra)
        storage.write_bytes(os.path.join(uri, card.CARD_FILE), card.render(json.loads(laconic)).encode())
        storage.write_bytes(os.path.join(uri, LACONIC_FILE), laconic.encode())
        return uri

    def push_to_hub(
        self,
        repo_id: str,
        *,
        token: str | None = None,
        private: bool = True,
        commit_message: str = "Upload sparse encoder (laconic_ray)",
        max_shard_size: str = "5GB",
    ) -> str:
        """Save (weights, tokenizer, card, laconic.json) and upload to the Hugging Face hub through
        ``huggingface_hub`` (``HF_TOKEN`` or ``token``); the repo is created (private by default) if missing.
        Returns the commit's URL."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, max_shard_size=max_shard_size)
            commit = api.upload_folder(folder_path=tmp, repo_id=repo_id, commit_message=commit_message)
        return str(getattr(commit, "commit_url", commit))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        mode: str | None = None,
        dtype: str | torch.dtype | None = None,
        lora: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        tokenizer: str | None = None,
        attn_implementation: str = "sdpa",
        vocab_chunk: int = 2048,
        pooling_layout: str = "auto",
        options: storage.StorageOptions | None = None,
        **settings: Any,
    ) -> SparseEncoder:
        """Load a laconic checkpoint (settings from its ``laconic.json``), a released checkpoint known by its
        hub id (``utahnlp/laconic-1b``, ``naver/splade-v3``: settings from :mod:`registry`), or any HF causal or
        masked LM (default settings for its kind); explicit arguments override those settings. ``lora`` (r,
        alpha, dropout, target_modules) adds fresh adapters after the attention mode is applied."""
        from transformers import AutoConfig

        source = os.fspath(name_or_path)
        refuse_doc_only(source)
        if storage.is_remote(source):
            source = storage.localize(source, options)
        if (Path(source) / ADAPTER_FILE).is_file() and not (Path(source) / "config.json").is_file():
            encoder = cls._from_adapter(
                source,
                mode=mode,
                tokenizer=tokenizer,
                settings=settings,
                dtype=dtype,
                device=device,
                attn_implementation=attn_implementation,
                vocab_chunk=vocab_chunk,
                pooling_layout=pooling_layout,
                options=options,
            )
            if lora:
                encoder.add_lora(**lora)
            return encoder
        from laconic_ray.model import st_format

        # a sentence-transformers Router folder keeps its MLM in a subfolder and its query table in another
        model_source, static_dir = st_format.locate(source) if Path(source).is_dir() else (source, None)
        try:
            config = AutoConfig.from_pretrained(model_source)
            check_architecture(config.to_dict(), source)
            loaded_tokenizer = load_tokenizer(tokenizer or model_source)
            fields = default_settings(os.fspath(name_or_path), source, config.to_dict(), loaded_tokenizer)
            fields.update({k: v for k, v in settings.items() if v is not None})
            if mode is not None:
                fields["mode"] = mode
            encoder_settings = EncoderSettings(**fields)
            at_load = _load_quantized(encoder_settings.quantization, device)  # CUDA int8/int4: bitsandbytes
            if _is_meta(device):  # shapes only: read config.json, no weights
                model = _empty_model(config, dtype, attn_implementation)
            else:
                model = auto_model_class(config.to_dict()).from_pretrained(
                    model_source,
                    config=config,
                    dtype=resolve_dtype(dtype),
                    attn_implementation=attn_implementation,
                    **at_load,
                )
        except OSError as e:
            if Path(source).exists():
                raise
            raise ModelUnavailable(
                f"{source}: not a local folder, and the hub did not give it ({' '.join(str(e).split())[:300]}). "
                "A hub id needs internet or a filled cache (HF_HUB_OFFLINE=1); a gated repo (meta-llama/*) a "
                "token: HF_TOKEN here, and on Ray workers in the nodes' own environment (runtime envs, which "
                "Ray logs, never carry it)"
            ) from None
        encoder = cls(
            model,
            loaded_tokenizer,
            encoder_settings,
            vocab_chunk=vocab_chunk,
            pooling_layout=pooling_layout,
        )
        encoder.model_id = _saved_model_id(source)
        encoder.base_model, encoder.training_history = _provenance(os.fspath(name_or_path), source)
        if encoder.settings.query_encoder == "idf":
            encoder.query_weights = _query_table(os.fspath(name_or_path), source, static_dir, encoder)
        if encoder.settings.term_weights:
            encoder.load_term_weights(source)
        if lora:
            encoder.add_lora(**lora)
        if device and not _is_meta(device) and not at_load:
            encoder = encoder.to(device)  # (bitsandbytes placed its weights on the GPU itself)
        if at_load:
            encoder.quantized = encoder_settings.quantization
        elif not _is_meta(device) and not lora:
            encoder.quantize(encoder_settings.quantization)
        return encoder

    @classmethod
    def from_sentence_transformers(cls, model: Any, **kwargs: Any) -> SparseEncoder:
        """A sentence-transformers ``SparseEncoder`` (the object, or its folder or hub id) as ours: SPLADE
        (MLM + SpladePooling) or document-only (Router with a static query table), its prompts, max length
        and activation kept."""
        if isinstance(model, str | os.PathLike):
            return cls.from_pretrained(model, **kwargs)
        with tempfile.TemporaryDirectory() as tmp:
            model.save(tmp)
            return cls.from_pretrained(tmp, **kwargs)

    @classmethod
    def _from_adapter(
        cls, source: str, *, mode: str | None, tokenizer: str | None, settings: dict[str, Any], **load: Any
    ) -> SparseEncoder:
        """A PEFT adapter folder (``adapter_config.json``, no weights of its own): its base model, loaded as
        :meth:`from_pretrained` would, with the adapter applied and merged. Settings come from the adapter
        folder's ``laconic.json`` if it has one (else the base's), then the caller's."""
        from peft import PeftModel

        adapter = json.loads((Path(source) / ADAPTER_FILE).read_text())
        base = adapter.get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{source}/{ADAPTER_FILE}: no base_model_name_or_path to apply the adapter to")
        saved = _read_settings(source)
        fields = dataclasses.asdict(saved) if saved else {}
        fields.update({k: v for k, v in settings.items() if v is not None})
        fields["mode"] = mode or fields.get("mode")
        quantization = (
            fields.pop("quantization", None) or "none"
        )  # after the merge: adapters need real weights
        with_term_weights = fields.pop("term_weights", False)  # the adapter folder's file, not the base's
        has_tokenizer = (Path(source) / "tokenizer_config.json").is_file()
        encoder = cls.from_pretrained(
            base,
            tokenizer=tokenizer or (source if has_tokenizer else None),
            quantization="none",
            **load,
            **fields,
        )
        encoder.model = PeftModel.from_pretrained(encoder.model, source).merge_and_unload()
        encoder.model_id = _saved_model_id(source)
        if with_term_weights:
            encoder.load_term_weights(source)
        return encoder.quantize(quantization)

    @classmethod
    def from_config(
        cls,
        config: Any,
        tokenizer: Any,
        *,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        seed: int | None = 0,
        device: str | torch.device | None = None,
        lora: dict[str, Any] | None = None,
        vocab_chunk: int = 2048,
        pooling_layout: str = "auto",
        **settings: Any,
    ) -> SparseEncoder:
        """Random init from an HF config (object or dict with ``model_type``) and a tokenizer (object or
        anything :func:`load_tokenizer` takes)."""
        config = build_hf_config(config)
        if seed is not None:
            torch.manual_seed(seed)
        if _is_meta(device):
            model = _empty_model(config, dtype, attn_implementation)
        else:
            model = auto_model_class(config.to_dict()).from_config(
                config, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation
            )
        if isinstance(tokenizer, str | os.PathLike):
            tokenizer = load_tokenizer(tokenizer)
        encoder = cls(
            model,
            tokenizer,
            EncoderSettings(**{k: v for k, v in settings.items() if v is not None}),
            vocab_chunk=vocab_chunk,
            pooling_layout=pooling_layout,
        )
        if lora:
            encoder.add_lora(**lora)
        return encoder.to(device) if device and not _is_meta(device) else encoder


def _as_csr(vectors) -> tuple[sp.csr_matrix, bool]:
    """Vectors (torch sparse/dense 1-D or 2-D, scipy sparse, numpy) -> (CSR [n, vocab], whether one 1-D vector)."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu()
        vectors = vectors.to_dense() if vectors.is_sparse else vectors
        vectors = vectors.float().numpy()
    if sp.issparse(vectors):
        return sp.csr_matrix(vectors), False
    array = np.asarray(vectors, dtype=np.float32)
    single = array.ndim == 1
    return sp.csr_matrix(array.reshape(1, -1) if single else array), single


class ModelUnavailable(OSError):
    """A model named by hub id or path cannot be had from here (offline, gated, misspelt)."""


class UnsupportedModel(ValueError):
    """A checkpoint this encoder would load, but encode wrongly (an encoder-only masked LM, say)."""


# Encoder-only families. AutoModelForCausalLM would turn their masked-LM checkpoints into a decoder (BERT ->
# BertLMHeadModel) with a warning only; they load with AutoModelForMaskedLM instead
ENCODER_ONLY = {"bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra", "deberta", "deberta-v2",
                "modernbert", "mpnet", "albert"}  # fmt: skip


def is_masked_lm(model: nn.Module) -> bool:
    """A masked LM (``*ForMaskedLM``: classic SPLADE's backbone) rather than a causal one."""
    return type(model).__name__.endswith("ForMaskedLM")


def config_is_masked(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` (as a dict) describes a masked LM: its architecture, or for a config with
    none (built in code), its family."""
    architectures = config.get("architectures") or []
    if architectures:
        return any(a.endswith("ForMaskedLM") for a in architectures)
    return config.get("model_type") in ENCODER_ONLY


def auto_model_class(config: dict[str, Any]):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if config_is_masked(config) else AutoModelForCausalLM


class Bf16Embedding(nn.Embedding):
    """An embedding table kept in bf16 whose looked-up rows come out in fp32 (int8-quantized encoders)."""

    def __init__(self, weight: torch.Tensor, padding_idx: int | None) -> None:
        super().__init__(
            weight.shape[0], weight.shape[1], padding_idx=padding_idx, _weight=weight, _freeze=True
        )

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids).float()


class HeadInput(nn.Linear):
    """A masked LM's output projection that hands back its input instead of [.., vocab] logits: the model's
    own forward then ends where the MLM head's transform (dense, activation, norm: it differs per family)
    ends, and :func:`max_pool_logits` projects chunk by chunk with this layer's weight and bias. Swapped in
    by class only, so parameter names, tying and state dicts are those of the ``nn.Linear`` it was."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden


def expose_head_input(model: nn.Module) -> None:
    head = model.get_output_embeddings()
    if type(head) not in (nn.Linear, HeadInput):
        raise UnsupportedModel(
            f"{type(model).__name__}: its output projection is a {type(head).__name__}, not a Linear layer; "
            "only masked LMs whose MLM head ends in one (BERT, DistilBERT, RoBERTa, ...) are supported"
        )
    head.__class__ = HeadInput


def check_architecture(config: dict[str, Any], source: str) -> None:
    """Refuse what would load but encode wrongly: an encoder-only checkpoint without its masked-LM head (a bare
    ``BertModel``: AutoModelForMaskedLM would add a random head). ``config`` is the checkpoint's
    ``config.json``."""
    architectures = config.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "ForMaskedLM")) for a in architectures):
        return
    if config.get("model_type") in ENCODER_ONLY:
        what = ", ".join(architectures) or config.get("model_type")
        raise UnsupportedModel(
            f"{source}: a {what} checkpoint without a masked-LM head; a sparse encoder needs the vocabulary "
            "projection (a *ForMaskedLM checkpoint, as SPLADE models are, or a *ForCausalLM one)"
        )


def refuse_doc_only(name: str, key: str = "model") -> None:
    """A document-only SPLADE model (queries through an inference-free idf table, not the MLM) would encode
    its queries wrongly here: refuse it by name, before anything is downloaded."""
    from laconic_ray.model.registry import is_doc_only

    if is_doc_only(name):
        raise UnsupportedModel(
            f"{key}: {name} is a document-only model whose query encoder is not reproduced here (its queries are "
            "not MLM outputs). Use a symmetric model (naver/splade-v3) or a document-only one with an idf.json "
            "(opensearch-project/opensearch-neural-sparse-encoding-doc-v3-distill, or query_encoder=idf)"
        )


def check_model_source(
    source: str, options: storage.StorageOptions | None = None, key: str = "model"
) -> None:
    """Fail fast, on the driver and before any cluster starts, when ``source`` is no loadable model: a local
    folder or ``s3://`` prefix must hold ``config.json`` (or a PEFT ``adapter_config.json``); a hub id must be
    reachable (its ``config.json``, one small request, or the local cache with HF_HUB_OFFLINE=1)."""
    source = os.fspath(source)
    refuse_doc_only(source, key)
    if storage.is_remote(source):
        if not any(storage.exists(storage.join(source, f), options) for f in ("config.json", ADAPTER_FILE)):
            raise ModelUnavailable(f"{key}: {source} holds no config.json: not a model folder")
        return
    path = Path(source).expanduser()
    if path.exists() or source.startswith((".", "/", "~")) or os.sep + os.sep in source:
        if not any((path / f).is_file() for f in ("config.json", ADAPTER_FILE)):
            what = "does not exist" if not path.exists() else "holds no config.json: not a model folder"
            raise ModelUnavailable(f"{key}: {source} {what}")
        if (path / "config.json").is_file():
            try:
                config = json.loads((path / "config.json").read_text())
            except (ValueError, UnicodeDecodeError) as e:
                raise ModelUnavailable(f"{key}: {source}/config.json is not valid JSON ({e})") from None
            check_architecture(config, f"{key}: {source}")
        return
    try:
        _hub_config_reachable(source)
    except Exception as e:
        raise ModelUnavailable(
            f"{key}: {source} is no local folder and the hub does not give it ({type(e).__name__}). A hub id "
            "needs internet or a filled cache (HF_HUB_OFFLINE=1); a gated repo (meta-llama/*) needs HF_TOKEN "
            "here and in the Ray nodes' own environment (runtime envs, which Ray logs, never carry it)"
        ) from None


def _hub_config_reachable(repo: str, timeout_s: float = 10.0) -> None:
    """Raise unless ``repo``'s config.json is in the local hub cache or answers one HEAD request (the hub
    client's own download retries five times with back-off: half a minute offline before saying so)."""
    import urllib.request

    from huggingface_hub import constants, hf_hub_download

    try:
        hf_hub_download(repo, "config.json", local_files_only=True)
        return
    except Exception:
        if constants.HF_HUB_OFFLINE:
            raise
    request = urllib.request.Request(f"{constants.ENDPOINT}/{repo}/resolve/main/config.json", method="HEAD")
    token = os.environ.get("HF_TOKEN")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout_s):
        pass


def _is_meta(device: str | torch.device | None) -> bool:
    return device is not None and torch.device(device).type == "meta"


def _empty_model(config: Any, dtype: str | torch.dtype | None, attn_implementation: str) -> nn.Module:
    """The causal LM of ``config`` with its parameters on the meta device (no memory) and its buffers real:
    non-persistent buffers such as rotary frequencies are computed at construction and are in no state
    dict, so they must exist before the weights are loaded into a materialised copy (parallel.py)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = auto_model_class(config.to_dict()).from_config(
            config, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation
        )
    model.tie_weights()  # the empty-weights context replaced the tied parameter by two meta ones
    return model


def build_hf_config(config: Any):
    """An HF ``PretrainedConfig`` from a config object or a plain dict holding ``model_type``."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    fields = dict(config)
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise ValueError("an architecture dict needs a 'model_type' (e.g. 'llama')")
    return AutoConfig.for_model(model_type, **fields)


def weights_digest(folder: str) -> str:
    """``sha256:<hex>`` over a saved model's weight files (names and bytes, in name order), its term weights
    included when it has them (they change every output weight as much as the LM's own do)."""
    h = hashlib.sha256()
    from laconic_ray.model.term_weights import TERM_WEIGHTS_FILE

    extra = [Path(folder) / TERM_WEIGHTS_FILE] if (Path(folder) / TERM_WEIGHTS_FILE).is_file() else []
    for path in [*sorted(Path(folder).glob("*.safetensors")), *extra]:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
    return f"sha256:{h.hexdigest()}"


def _load_quantized(method: str, device: str | torch.device | None) -> dict[str, Any]:
    """``from_pretrained`` arguments that quantize at load: bitsandbytes on CUDA for int8 (LLM.int8) and int4
    (NF4, bf16 compute). The LM head stays 16-bit (bitsandbytes skips it), so pooling runs as on any GPU.
    Empty on CPU, where :meth:`SparseEncoder.quantize` quantizes after load."""
    if method not in ("int8", "int4") or device is None or torch.device(device).type != "cuda":
        return {}
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as e:  # pragma: no cover - transformers always has it
        raise ValueError(
            f"quantization={method} on CUDA needs transformers' BitsAndBytesConfig ({e})"
        ) from None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"quantization={method} on CUDA needs `pip install bitsandbytes` (laconic_ray[gpu])")
    if method == "int8":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    return {"quantization_config": config, "device_map": {"": torch.device(device).index or 0}}


def _query_table(name: str, source: str, static_dir: str | None, encoder: SparseEncoder) -> torch.Tensor:
    """The static query table [vocab] of a document-only model: a sentence-transformers SparseStaticEmbedding
    folder's weights, or ``idf.json`` (token -> weight; OpenSearch's layout) in the folder or hub repo. Tokens
    map to ids as sentence-transformers maps them (``convert_tokens_to_ids``)."""
    from laconic_ray.model import st_format

    table = torch.zeros(encoder.vocab_size, dtype=torch.float32)
    if static_dir is not None:
        weights = st_format.query_weights(static_dir)
        table[: min(len(weights), len(table))] = weights[: len(table)]
        return table
    path = Path(source) / IDF_FILE
    if not path.is_file() and not Path(source).exists():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(name, IDF_FILE))
        except Exception:
            pass
    if not path.is_file():
        raise UnsupportedModel(
            f"{name}: query_encoder=idf needs the static query table, {IDF_FILE} (token -> weight), beside the "
            "model (or a sentence-transformers Router folder); none found"
        )
    idf = json.loads(path.read_text())
    ids = encoder.tokenizer.convert_tokens_to_ids(list(idf))
    table[torch.as_tensor(ids, dtype=torch.long)] = torch.tensor(list(idf.values()), dtype=torch.float32)
    return table


def _provenance(name: str, source: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(base hub id, training phases) of a checkpoint: from its laconic.json, or for a plain hub model, its id."""
    path = Path(source) / LACONIC_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        return saved.get("base_model"), list(saved.get("training") or [])
    is_hub_id = not Path(name).exists() and not storage.is_remote(name) and name.count("/") == 1
    return (name if is_hub_id else None), []


def _saved_model_id(source: str) -> str | None:
    path = Path(source) / LACONIC_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("model_id")


def default_settings(name: str, source: str, config: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """The settings a checkpoint encodes with unless the caller overrides them: its ``laconic.json``; else
    its sentence-transformers files (a SPLADE model saved by sentence-transformers); else the registry's entry
    for its hub id; else the defaults of its kind (masked LMs: what sentence-transformers gives them)."""
    from laconic_ray.model import st_format
    from laconic_ray.model.registry import known_settings

    saved = _read_settings(source)
    if saved is not None:
        return dataclasses.asdict(saved)
    # sentence-transformers' own default length: the model's positions, or the tokenizer's limit if lower
    max_length = min(config.get("max_position_embeddings") or 512, tokenizer.model_max_length)
    from_st = st_format.read_settings(source, max_length) if Path(source).is_dir() else None
    if from_st is not None:
        return from_st
    known = known_settings(name)
    if known is not None:
        return known
    if config_is_masked(config):  # no prefixes, [CLS] ... [SEP]: as SPLADE models were trained
        return {"query_prefix": "", "passage_prefix": "", "special_tokens": True,
                "query_max_length": max_length, "passage_max_length": max_length}  # fmt: skip
    return {}


def _read_settings(source: str) -> EncoderSettings | None:
    """Settings from ``laconic.json`` in a local dir or hub repo; ``None`` for a plain causal LM."""
    path = Path(source) / LACONIC_FILE
    if path.is_file():
        return EncoderSettings.from_json(path.read_text(), source=str(path))
    if Path(source).exists():
        return None
    try:  # a hub id: fetch the small file if the repo has one
        from huggingface_hub import hf_hub_download

        return EncoderSettings.from_json(Path(hf_hub_download(source, LACONIC_FILE)).read_text())
    except Exception:  # no such file, offline, or not a hub repo: a plain causal LM
        return None
