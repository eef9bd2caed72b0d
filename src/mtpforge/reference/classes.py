"""Which transformers classes run each family: the one table the reference runtime reads.

`mrope`: Qwen3.5's rotary embedding takes positions for three axes (text uses
the same position on all three); Qwen3-Next's takes plain positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers.models.qwen3_5 import modeling_qwen3_5 as q35
from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5Config, Qwen3_5TextConfig
from transformers.models.qwen3_5_moe import modeling_qwen3_5_moe as q35moe
from transformers.models.qwen3_5_moe.configuration_qwen3_5_moe import Qwen3_5MoeConfig, Qwen3_5MoeTextConfig
from transformers.models.qwen3_next import modeling_qwen3_next as qnext
from transformers.models.qwen3_next.configuration_qwen3_next import Qwen3NextConfig

from mtpforge.errors import UnsupportedFamilyError


@dataclass(frozen=True)
class Runtime:
    wrapper_config: Any  # the vision-language config class, or None
    text_config: Any
    causal_lm: Any
    decoder_layer: Any
    rms_norm: Any
    rotary: Any
    mrope: bool


RUNTIMES = {
    "qwen3_5": Runtime(Qwen3_5Config, Qwen3_5TextConfig, q35.Qwen3_5ForCausalLM, q35.Qwen3_5DecoderLayer, q35.Qwen3_5RMSNorm,
                       q35.Qwen3_5TextRotaryEmbedding, True),
    "qwen3_5_moe": Runtime(Qwen3_5MoeConfig, Qwen3_5MoeTextConfig, q35moe.Qwen3_5MoeForCausalLM, q35moe.Qwen3_5MoeDecoderLayer,
                           q35moe.Qwen3_5MoeRMSNorm, q35moe.Qwen3_5MoeTextRotaryEmbedding, True),
    "qwen3_next": Runtime(None, Qwen3NextConfig, qnext.Qwen3NextForCausalLM, qnext.Qwen3NextDecoderLayer, qnext.Qwen3NextRMSNorm,
                          qnext.Qwen3NextRotaryEmbedding, False),
}


def runtime_for(family: str) -> Runtime:
    """The reference runtime of `family`; UnsupportedFamilyError (exit 3) for the families doctor knows but the
    reference does not run (DeepSeek, GLM, MiMo: docs/families.md)."""
    if family not in RUNTIMES:
        raise UnsupportedFamilyError(f"the reference runtime does not run {family} (it runs {', '.join(RUNTIMES)})",
                                     hint="serve the checkpoint with vLLM (mtpforge serve) and measure its drafts with "
                                          "mtpforge bench")
    return RUNTIMES[family]


def text_config(runtime: Runtime, config: dict[str, Any]) -> Any:
    """transformers' text config for a checkpoint config (wrapper or flat)."""
    fields = {k: v for k, v in config.items() if k != "quantization_config"}
    if "text_config" in config and runtime.wrapper_config is not None:
        return runtime.wrapper_config(**fields).text_config
    return runtime.text_config(**fields)
