"""The reference runtime in bounded memory: tensors read straight from the shards into the working
dtype on the target device, and, for a model that does not fit, one decoder layer resident at a time.

    model = open_streamed(path, device="cpu")            # float32 compute, layers streamed
    hiddens = model.hidden_states([seq1, seq2])           # post-final-norm hidden states, [1, T, H] each
    logits = model.logits(hiddens[0])                     # lm_head, vocabulary rows in chunks
    model.head                                            # the MTP head (resident), as in `ReferenceModel`

What stays resident: the MTP head (in the working dtype), `lm_head` once logits are asked for and the
final norm (lm_head in the stored dtype, widened one vocabulary chunk at a time), and, for an embedding stored dense, none
of `embed_tokens`: its rows are read from the shard when a token needs them. A decoder layer is
built from the config by transformers' own class (Gated DeltaNet or attention, from `layer_types`)
on the meta device, given its dequantized weights, run over every sequence, and freed, so the
weights are read once per pass however many sequences there are. With `keep_layers` (a model
that fits the device, e.g. 27B BF16 on one 80 GiB GPU) layers stay after their first use instead.

Same interface as `reference.model.ReferenceModel` for what `verify.teacher_forced` and
`verify.divergence` read: `head`, `device`, `embed`, `logits`, `hidden_states`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask

from mtpforge.checkpoint import CheckpointLike, as_checkpoint
from mtpforge.checkpoint.checkpoint import Checkpoint
from mtpforge.checkpoint.tensors import read_tensor, read_weight
from mtpforge.errors import CheckpointError
from mtpforge.families import MTP, detect_family
from mtpforge.formats.dequant import TORCH_DTYPES
from mtpforge.formats.stored import DENSE, StoredWeight
from mtpforge.reference.classes import Runtime, runtime_for, text_config
from mtpforge.reference.model import fuse_experts
from mtpforge.reference.mtp import MtpHead

VOCAB_CHUNK = 16384  # lm_head rows widened at a time: 16K x 5120 x 4 B = 320 MiB at 27B widths
_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")


@dataclass
class _Weights:
    """The checkpoint's logical weights sorted by where the streamed runtime uses them."""

    layers: dict[int, dict[str, StoredWeight]] = field(default_factory=dict)  # local names within each decoder layer
    embed: StoredWeight | None = None
    norm: StoredWeight | None = None
    lm_head: StoredWeight | None = None
    head: dict[str, StoredWeight] = field(default_factory=dict)  # names within `mtp.`


def _sort(ckpt: Checkpoint) -> _Weights:
    family = detect_family(ckpt.config)
    prefix = family.trunk_prefix(ckpt.config) + "."
    out = _Weights()
    for name, weight in ckpt.stored.items():
        if family.group_of(name) == MTP and name.startswith("mtp."):
            out.head[name[len("mtp."):]] = weight
        elif name == "lm_head.weight":
            out.lm_head = weight
        elif name.startswith(prefix):
            local = name[len(prefix):]
            m = _LAYER.match(local)
            if m:
                out.layers.setdefault(int(m.group(1)), {})[m.group(2)] = weight
            elif local == "embed_tokens.weight":
                out.embed = weight
            elif local == "norm.weight":
                out.norm = weight
    return out


class EmbeddingRows:
    """`embed_tokens` rows read from the shard when a token needs them (a dense stored embedding is never resident)."""

    def __init__(self, ckpt: Checkpoint, weight: StoredWeight, dtype: torch.dtype, device: torch.device) -> None:
        self.ckpt, self.dtype, self.device = ckpt, dtype, device
        self.info = weight.parts[""] if weight.format == DENSE else None
        # a quantized embedding (rare) is dequantized once and kept in its dequantized dtype
        self.table = None if self.info is not None else read_weight(ckpt, weight).to(device)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1).tolist()
        if self.table is not None:
            rows = self.table[torch.tensor(flat, device=self.device)]
        else:
            rows = self._read(flat)
        return rows.to(self.dtype).reshape(*ids.shape, -1)

    def _read(self, tokens: list[int]) -> torch.Tensor:
        info = self.info
        assert info is not None
        vocab, width = info.shape
        row_bytes = info.nbytes // vocab
        wanted = sorted(set(tokens))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < vocab:
            raise CheckpointError(f"{info.shard}: token id {wanted[-1]} is outside the embedding's {vocab} rows",
                                  hint="the token ids do not belong to this checkpoint's tokenizer")
        store = TORCH_DTYPES[info.dtype]
        rows = {}
        with open(self.ckpt.root / info.shard, "rb") as f:
            for token in wanted:
                f.seek(info.begin + token * row_bytes)
                raw = bytearray(f.read(row_bytes))
                if len(raw) != row_bytes:
                    raise CheckpointError(f"{info.shard}: tensor {info.name} is cut short at row {token}",
                                          hint=f"the shard is truncated: run `mtpforge doctor {self.ckpt.root}`")
                rows[token] = torch.frombuffer(raw, dtype=store)
        return torch.stack([rows[t] for t in tokens]).reshape(len(tokens), width).to(self.device)


class StreamedModel:
    """The trunk one layer at a time, the head and lm_head resident: bounded memory at any depth."""

    def __init__(self, ckpt: Checkpoint, *, dtype: torch.dtype, device: str, keep_layers: bool = False) -> None:
        self.ckpt = ckpt
        self.name = str(ckpt.root)
        self.dtype = dtype
        self.device = torch.device(device)
        self.keep_layers = keep_layers
        self.runtime: Runtime = runtime_for(detect_family(ckpt.config).name)
        self.config = text_config(self.runtime, ckpt.config)
        self.config._attn_implementation = "sdpa"
        self.weights = _sort(ckpt)
        w = self.weights
        if w.embed is None or w.norm is None or sorted(w.layers) != list(range(self.config.num_hidden_layers)):
            raise CheckpointError(f"{self.name}: the trunk does not match its config: embed_tokens, norm or "
                                  f"layers 0..{self.config.num_hidden_layers - 1} are missing",
                                  hint=f"run `mtpforge doctor {self.name}`")
        self.embed_rows = EmbeddingRows(ckpt, w.embed, dtype, self.device)
        lm_head = w.lm_head if w.lm_head is not None else (w.embed if self.config.tie_word_embeddings else None)
        if lm_head is None:
            raise CheckpointError(f"{self.name}: no lm_head.weight and the embeddings are not tied",
                                  hint=f"run `mtpforge doctor {self.name}`")
        self._lm_head_weight = lm_head
        self._lm_head: torch.Tensor | None = None
        self.norm = self.runtime.rms_norm(self.config.hidden_size, eps=self.config.rms_norm_eps)
        self.norm.weight.data = self._read(w.norm)
        self.norm.to(self.device)
        self.rotary = self.runtime.rotary(self.config).to(self.device)
        self._head: MtpHead | None = None
        self._resident: dict[int, torch.nn.Module] = {}

    @property
    def lm_head(self) -> torch.Tensor:
        """lm_head in its stored dtype, read on first use (a pass that needs no logits, e.g. the head's calibration
        capture, never holds its 2.5 GB at 27B)."""
        if self._lm_head is None:
            self._lm_head = self._read(self._lm_head_weight, keep_stored_dtype=True)
        return self._lm_head

    @property
    def head(self) -> MtpHead | None:
        """The MTP head, read on first use (a trunk-only pass, e.g. for KLD, never holds it); None without one."""
        if self._head is None and self.weights.head:
            self._head = self._build_head()
        return self._head

    def release_head(self) -> None:
        """Free the head's weights (read again if used again)."""
        self._head = None

    # -- the same surface as ReferenceModel ------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed_rows(ids)

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`lm_head(hidden)`, the vocabulary in chunks of `VOCAB_CHUNK` rows widened to the working dtype."""
        x = hidden.to(self.device, self.dtype)
        parts = [x @ self.lm_head[i:i + VOCAB_CHUNK].to(self.dtype).T for i in range(0, self.lm_head.shape[0], VOCAB_CHUNK)]
        return torch.cat(parts, -1)

    @torch.no_grad()
    def hidden_states(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Post-final-norm hidden states [1, T, H] of each sequence; each decoder layer is read once for all of them."""
        states = [self.embed(torch.tensor([seq])) for seq in sequences]
        aux = [self._layer_inputs(x) for x in states]
        for i in range(self.config.num_hidden_layers):
            layer = self.layer(i)
            mask_key = self.config.layer_types[i]
            for j, (position_embeddings, masks, positions) in enumerate(aux):
                states[j] = layer(states[j], position_embeddings=position_embeddings, attention_mask=masks[mask_key],
                                  position_ids=positions, past_key_values=None, use_cache=False)
            if not self.keep_layers:
                del layer
        return [self.norm(x) for x in states]

    @torch.no_grad()
    def greedy(self, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
        """Each prompt followed by the trunk's greedy continuation. One pass over every layer per new token, for all
        prompts at once, and no KV cache: memory stays bounded, but a large model on a CPU is slow this way; the
        engine's own text (`--engine-url`) or a saved `--sequences` file is the fast source."""
        seqs = [list(p) for p in prompts]
        for _ in range(new_tokens):
            for seq, hidden in zip(seqs, self.hidden_states(seqs), strict=True):
                seq.append(int(self.logits(hidden[:, -1:])[0, -1].argmax()))
        return seqs

    # -- the pieces ------------------------------------------------------------------------------
    def layer(self, i: int) -> torch.nn.Module:
        """Decoder layer `i` with its weights (from the shards unless resident)."""
        if i in self._resident:
            return self._resident[i]
        with torch.device("meta"):
            module = self.runtime.decoder_layer(self.config, i)
        state = {name: self._read(weight) for name, weight in self.weights.layers[i].items()}
        state = {k[len("x."):]: v for k, v in fuse_experts({"x." + k: v for k, v in state.items()}).items()}
        _assign(module, state, self.name, f"decoder layer {i}")
        module.eval()
        if self.keep_layers:
            self._resident[i] = module
        return module

    def _layer_inputs(self, x: torch.Tensor) -> tuple[Any, dict[str, Any], torch.Tensor]:
        """Rotary embeddings, masks and text positions for one sequence, as the family's text model builds them."""
        n = x.shape[1]
        positions = torch.arange(n, device=self.device)[None]
        rope = positions[None].expand(3, 1, n) if self.runtime.mrope else positions
        kwargs = {"config": self.config, "inputs_embeds": x, "attention_mask": None, "past_key_values": None,
                  "position_ids": positions}
        masks = {"full_attention": create_causal_mask(**kwargs), "linear_attention": create_recurrent_attention_mask(**kwargs)}
        return self.rotary(x, rope), masks, positions

    def _read(self, weight: StoredWeight, *, keep_stored_dtype: bool = False) -> torch.Tensor:
        """One weight dequantized, in the working dtype (or its stored floating dtype) on the device."""
        tensor = read_weight(self.ckpt, weight)
        dtype = tensor.dtype if keep_stored_dtype and tensor.is_floating_point() else self.dtype
        return tensor.to(device=self.device, dtype=dtype)

    def _build_head(self) -> MtpHead:
        layers = detect_family(self.ckpt.config).mtp_layers(self.ckpt.config) or 1
        with torch.device("meta"):
            head = MtpHead(self.config, layers, self.runtime)
        state = {name: self._read(weight) for name, weight in self.weights.head.items()}
        state = fuse_experts(state)
        head.rotary_emb = self.runtime.rotary(head.config).to(self.device)  # its inv_freq is computed, not stored
        _assign(head, state, self.name, "MTP head", skip=("rotary_emb.",))
        return head.eval()


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str, what: str, skip: tuple[str, ...] = ()) -> None:
    """Give a meta-device module its weights (no second copy); every parameter must be given."""
    expected = {k for k in module.state_dict() if not k.endswith("inv_freq") and not k.startswith(skip)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: the {what} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}",
                              hint=f"run `mtpforge doctor {path}`")
    module.load_state_dict(state, strict=False, assign=True)


def open_streamed(path: CheckpointLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
                  keep_layers: bool = False) -> StreamedModel:
    """The bounded-memory reference runtime for the checkpoint at `path` (a directory, or an open `Checkpoint`).

    Raises:
        CheckpointError: the family is not one the reference runtime implements, or tensors are missing.
    """
    return StreamedModel(as_checkpoint(path), dtype=dtype, device=device, keep_layers=keep_layers)


__all__ = ["VOCAB_CHUNK", "EmbeddingRows", "StreamedModel", "open_streamed", "read_tensor"]
