"""The reference runtime: transformers' own Qwen3.5 trunk plus the MTP head as vLLM runs it,
with weights from any checkpoint mtpforge reads (quantized weights dequantized).

    ref = load_reference(path)                  # CPU, float32 by default
    hidden, logits = ref.trunk_forward(ids)     # post-final-norm hidden states, next-token logits
    head_hidden = ref.head(ref.embed(next_ids), hidden, positions)
    draft_logits = ref.logits(head_hidden)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from mtpforge.checkpoint import CheckpointLike, as_checkpoint
from mtpforge.checkpoint.tensors import read_weight
from mtpforge.errors import CheckpointError
from mtpforge.families import EMBEDDINGS, MTP, TRUNK, detect_family
from mtpforge.reference.classes import runtime_for, text_config
from mtpforge.reference.mtp import MtpHead


@dataclass
class ReferenceModel:
    """A trunk and (when the checkpoint has one) its MTP head, ready to run."""

    trunk: Any  # the family's transformers *ForCausalLM
    head: MtpHead | None
    name: str

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.trunk.model.embed_tokens(ids.to(self.device))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.trunk.lm_head(hidden)

    @property
    def device(self) -> torch.device:
        return self.trunk.lm_head.weight.device

    @torch.no_grad()
    def hidden_states(self, sequences: list[list[int]]) -> list[torch.Tensor]:
        """Post-final-norm hidden states [1, T, H] of each token sequence (the streamed runtime has the same method)."""
        return [self.trunk.model(input_ids=torch.tensor([seq], device=self.device)).last_hidden_state for seq in sequences]

    @torch.no_grad()
    def trunk_forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-final-norm hidden states [B, T, H] and logits [B, T, V] for token ids [B, T]."""
        hidden = self.trunk.model(input_ids=ids.to(self.device)).last_hidden_state
        return hidden, self.trunk.lm_head(hidden)


def build_model(config: dict[str, Any], *, mtp_layers: int) -> tuple[Any, MtpHead | None]:
    """Untrained modules of the right shapes (the training script starts from these)."""
    runtime = runtime_for(detect_family(config).name)
    tc = text_config(runtime, config)
    tc._attn_implementation = "sdpa"
    trunk = runtime.causal_lm(tc)
    head = MtpHead(tc, mtp_layers, runtime) if mtp_layers else None
    return trunk, head


def load_reference(path: CheckpointLike, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> ReferenceModel:
    """Build the reference model from the checkpoint at `path` (a directory, or an open `Checkpoint`).

    Raises:
        CheckpointError: the family is not one the reference runtime implements, or tensors are missing.
    """
    ckpt = as_checkpoint(path)
    family = detect_family(ckpt.config)
    prefix = family.trunk_prefix(ckpt.config) + "."
    stored = ckpt.stored
    mtp_names = [n for n in stored if family.group_of(n) == MTP]
    layers = family.mtp_layers(ckpt.config) if mtp_names else 0
    trunk, head = build_model(ckpt.config, mtp_layers=layers)
    trunk_state = {}
    head_state = {}
    for name, weight in stored.items():
        group = family.group_of(name)
        if group in (TRUNK, EMBEDDINGS):
            local = "lm_head." + name[len("lm_head."):] if name.startswith("lm_head.") else "model." + name[len(prefix):]
            trunk_state[local] = read_weight(ckpt, weight)
        elif group == MTP and head is not None:
            head_state[name[len("mtp."):]] = read_weight(ckpt, weight)
    if trunk.config.tie_word_embeddings and "lm_head.weight" not in trunk_state:
        trunk_state["lm_head.weight"] = trunk_state["model.embed_tokens.weight"]
    _load(trunk, fuse_experts(trunk_state), str(path), "trunk")
    if head is not None:
        _load(head, fuse_experts(head_state), str(path), "MTP head")
    trunk.to(device=device, dtype=dtype).eval()
    if head is not None:
        head.to(device=device, dtype=dtype).eval()
    return ReferenceModel(trunk, head, str(path))


_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")


def fuse_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-expert weights into transformers' fused `gate_up_proj` [E, 2I, H] (gate, then up) and `down_proj` [E, H, I]."""
    per: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    out = {}
    for name, tensor in state.items():
        m = _EXPERT.match(name)
        if m:
            per.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = tensor
        else:
            out[name] = tensor
    for prefix, experts in per.items():
        order = sorted(experts)
        out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([experts[e]["gate_proj"], experts[e]["up_proj"]]) for e in order])
        out[f"{prefix}.down_proj"] = torch.stack([experts[e]["down_proj"] for e in order])
    return out


def _load(module: torch.nn.Module, state: dict[str, torch.Tensor], path: str, what: str) -> None:
    expected = {k for k in module.state_dict() if not k.endswith("inv_freq")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: the {what} does not match its config: missing {missing[:3]}, unexpected {unexpected[:3]}",
                              hint=f"run `mtpforge doctor {path}`")
    module.load_state_dict(state, strict=False)


