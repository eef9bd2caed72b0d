"""What a family rule says about one tensor, and the interface every family implements.

A family derives, from `config.json` alone, the complete expected inventory
of a checkpoint: every tensor's name, shape and dtype, and its role (group,
layer, layer kind, module, fused group, precision rule). Every other part of
mtpforge asks the family instead of matching names itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mtpforge.errors import CheckpointError

TRUNK, MTP, VISION, EMBEDDINGS = "trunk", "mtp", "vision", "embeddings"
GROUPS = (TRUNK, MTP, VISION, EMBEDDINGS)
FULL_ATTENTION, LINEAR_ATTENTION = "full_attention", "linear_attention"
ATTENTION_BLOCK, GDN_BLOCK, MLP_BLOCK, MTP_FC_BLOCK = "attention", "gdn", "mlp", "mtp_fc"

# Module kinds. Only LINEAR modules are ever targeted by a quantization scheme.
LINEAR, NORM, CONV, PARAM, EMBEDDING, EXPERTS, BIAS = "linear", "norm", "conv", "param", "embedding", "experts", "bias"

_CONFIG_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


@dataclass(slots=True, unsafe_hash=True)
class TensorSpec:
    """The expected shape, dtype and role of one tensor.

    Treated as immutable (nothing assigns to a spec once its family built it), but not a frozen
    dataclass: a frozen one takes five times longer to build, and a per-expert 397B MoE inventory
    holds about 95,000 specs (doctor's budget on a 400K-tensor index is seconds).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    group: str  # TRUNK, MTP, VISION or EMBEDDINGS
    module: str  # module path: the name without its parameter suffix
    kind: str  # LINEAR, NORM, CONV, PARAM, EMBEDDING, EXPERTS or BIAS
    layer: int | None = None
    layer_kind: str | None = None  # FULL_ATTENTION, LINEAR_ATTENTION (MTP layers are full attention)
    fused: str | None = None  # the module engines fuse this one into (e.g. `...self_attn.qkv_proj`)
    keep_high_precision: bool = False  # must never be quantized (conv1d, A_log, dt_bias, norms, routers)
    small_proj: bool = False  # GDN in_proj_a / in_proj_b: kept high precision by default
    norm_offset: bool = False  # RMSNorm stored as an offset from 1 (Gemma convention)
    expert: bool = False  # a routed MoE expert's weight (engines fuse all experts of a layer)
    block: str | None = None  # ATTENTION_BLOCK, GDN_BLOCK, MLP_BLOCK or MTP_FC_BLOCK: what quantization scopes select by
    optional: bool = False  # a copy engines take from the trunk when absent (a tied MTP `embed_tokens` / `shared_head.head`)

    @property
    def local_name(self) -> str:
        """The name inside its layer (`self_attn.q_norm.weight`), or its last two parts outside any layer
        (`norm.weight`): tensors of the same type in the trunk and the MTP head share it."""
        parts = self.name.split(".")
        if "layers" in parts:
            return ".".join(parts[parts.index("layers") + 2 :])
        return ".".join(parts[-2:])

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Inventory(dict[str, TensorSpec]):
    """An ordered map of tensor name to `TensorSpec`, built by the family blocks."""

    def add(self, name: str, shape: Iterable[int], **role: Any) -> None:
        module = name.rsplit(".", 1)[0] if name.endswith((".weight", ".bias")) else name
        self[name] = TensorSpec(name=name, shape=tuple(shape), module=module, **role)


class Family:
    """Base of the family rules; subclasses fill in the architecture."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    mtp_config_key: str = ""
    mtp_prefix = "mtp"  # the module path every MTP tensor's name starts with
    vision_prefix = "model.visual"  # the vision tower's module path
    mlx_wrapper = ""  # the path mlx-lm's `Model` puts the text model under (families/mlx_names.py)
    hybrid = True  # Gated DeltaNet + attention (engine/memory.py plans GDN state); False: attention only
    vllm_legacy_method = ""  # the `--speculative-config` method vLLM releases before the generic `mtp` used
    expert_config_key = "num_experts"  # routed experts per MoE layer
    kv_block_size = 16  # tokens per KV block of the attention kernel vLLM picks (FlashAttention: multiples of 16)
    # Config fields a grafted head must share with its trunk (families/ override with derived dimensions).
    head_dim_keys: tuple[str, ...] = ("hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                                      "intermediate_size")

    def bind(self, config: dict[str, Any]) -> Family:
        """The rules for this one config. Families whose MTP layers sit after the trunk's
        (`model.layers.{num_hidden_layers}`) need the layer count to tell them apart by name."""
        return self

    def text_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config block that holds the language model's fields."""
        return config

    def setting(self, config: dict[str, Any], key: str, default: Any = None) -> Any:
        """A text-config field, falling back to the top level (re-exported configs move them)."""
        text = self.text_config(config)
        if key in text:
            return text[key]
        return config.get(key, default)

    def mtp_layers(self, config: dict[str, Any]) -> int:
        """How many MTP layers the config declares (what the engine will build)."""
        value = self.setting(config, self.mtp_config_key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def with_setting(self, config: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
        """A copy of `config` with a text-config field set where the engines read it (and at top level if it is there too)."""
        import copy

        config = copy.deepcopy(config)
        text = self.text_config(config)
        text[key] = value
        if text is not config and key in config:
            config[key] = value
        return config

    def has_vision(self, config: dict[str, Any]) -> bool:
        """True when the architecture builds a vision tower unless told `language_model_only`."""
        return False

    def language_model_only(self, config: dict[str, Any]) -> bool:
        return bool(config.get("language_model_only", False))

    def dtype(self, config: dict[str, Any]) -> str:
        """The safetensors dtype the config says unquantized weights are stored in."""
        value = self.setting(config, "dtype") or self.setting(config, "torch_dtype") or "bfloat16"
        return _CONFIG_DTYPES.get(str(value), "BF16")

    def expected(self, config: dict[str, Any], *, fused_experts: bool = True, vision: bool | None = None,
                 mtp_fused_experts: bool | None = None, prefix: str | None = None) -> Inventory:
        """The full expected inventory: trunk, embeddings, MTP head and (if any) vision tower.

        Args:
            fused_experts: the trunk stores MoE experts as fused 3-D tensors (else one tensor per expert).
            vision: build the vision tower (default: when the config declares one).
            mtp_fused_experts: the same for the MTP head, decided apart (default: as the trunk).
            prefix: the language model's module path as stored (default: what the config implies).
        """
        raise NotImplementedError

    def kv_bytes_per_token(self, config: dict[str, Any], kv_bytes: int, tensor_parallel: int) -> int:
        """Bytes of KV cache one token takes in one attention layer on one GPU (vLLM's page arithmetic)."""
        heads = self.setting(config, "num_key_value_heads") or self.setting(config, "num_attention_heads") or 1
        hidden, n_heads = self.setting(config, "hidden_size") or 0, self.setting(config, "num_attention_heads") or 1
        head_dim = self.setting(config, "head_dim") or hidden // n_heads
        return 2 * max(1, heads // tensor_parallel) * head_dim * kv_bytes

    def expert_count(self, config: dict[str, Any]) -> int:
        """Routed experts per MoE layer (0: dense); what a head grafted across a pruned MoE must match."""
        value = self.setting(config, self.expert_config_key, 0)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    def head_dims(self, config: dict[str, Any]) -> dict[str, Any]:
        """The dimensions a grafted MTP head must share with the trunk it runs on (name -> value)."""
        return {key: self.setting(config, key) for key in self.head_dim_keys}

    def attention_layers(self, config: dict[str, Any]) -> int:
        """Trunk layers that hold a KV cache (all of them, unless the family is hybrid)."""
        return int(self.setting(config, "num_hidden_layers") or 0)

    def mtp_layer_index(self, name: str) -> int | None:
        """Which MTP layer (0-based) a tensor of the head belongs to; None outside the head's layers."""
        rest = name[len(self.mtp_prefix) + 1:] if name.startswith(self.mtp_prefix + ".") else ""
        parts = rest.split(".")
        if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1])
        return None

    def is_mtp(self, name: str) -> bool:
        """`group_of(name) == MTP`, answered from the prefix alone (the hot path of a 400K-tensor scan)."""
        return name.startswith(self.mtp_prefix + ".")

    def group_of(self, name: str) -> str:
        """The group of a tensor by its name alone (for tensors the inventory does not expect)."""
        # called for every stored name (400K on the largest indexes): prefix tests, no full split
        if self.is_mtp(name):
            return MTP
        if self.is_vision(name):
            return VISION
        if name.partition(".")[0] == "lm_head" or name.rsplit(".", 2)[-2:-1] in (["embed_tokens"], ["lm_head"]):
            return EMBEDDINGS
        return TRUNK

    def is_vision(self, name: str) -> bool:
        return name.startswith(self.vision_prefix + ".")

    def trunk_prefix(self, config: dict[str, Any]) -> str:
        """The module path of the language model (`model` or `model.language_model`)."""
        return "model"

    def trunk_prefixes(self, config: dict[str, Any]) -> tuple[str, ...]:
        """Every module path the engine loads the language model from, for this config."""
        return (self.trunk_prefix(config),)

    @staticmethod
    def require(config: dict[str, Any], key: str, value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise CheckpointError(f"config.json: {key} must be a non-negative integer, got {value!r}",
                                  hint="restore config.json from the base model")
        return value
