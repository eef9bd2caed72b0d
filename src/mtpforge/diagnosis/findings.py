"""The finding catalogue (docs/domain.md §8): stable codes, default severities, fixes.

Codes never change meaning once released. mtpforge adds eight to the shared
catalogue, for defects it leaves implicit: `tensor-missing`,
`tensor-unexpected`, `quant-declared-mismatch`, `quant-method-unsupported`,
`file-outside-checkpoint`, `tensor-duplicated`, `index-unlisted-tensor` and
`dtype-cast` (a note, not a defect: a float tensor the engine casts on load).
Unsafe paths in the index, and shards that are symlinks leaving the directory
or not regular files, are not findings: they are refused outright (exit 3),
because nothing read through them can be trusted. Any other such file (a
tokenizer file, chat_template.jinja, README.md) is never read and is reported
as `file-outside-checkpoint`.

`command` names the mtpforge command that applies a fix, where one does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Rule:
    severity: str
    fix: str
    command: str | None = None  # the mtpforge command that applies the fix, once it exists


# The commands that apply the most common fixes.
_DOCTOR_FIX = "mtpforge doctor {path} --fix --out OUT"
_GRAFT = "mtpforge graft {path} --donor BASE --out OUT"

CATALOGUE: dict[str, Rule] = {
    "mtp-missing": Rule(ERROR, "graft the head from the exact base model", _GRAFT),
    "mtp-unindexed": Rule(ERROR, "add the MTP tensors to weight_map and recompute total_size", _DOCTOR_FIX),
    "mtp-incomplete": Rule(ERROR, "re-graft the whole head from the base model", _GRAFT),
    "mtp-undeclared": Rule(WARNING, "declare the MTP layers in config.json", _DOCTOR_FIX),
    "mtp-quant-uncovered": Rule(ERROR, "exclude the head by its prefix ('re:^mtp.*' in compressed-tensors "
                                "ignore, 'model.layers.61*' in modelopt exclude_modules on DeepSeek-V3: the message gives "
                                "the entry in this config's syntax)", _DOCTOR_FIX),
    "mtp-ignore-fused-unsafe": Rule(ERROR, "replace the per-module MTP entries with one for the head's prefix "
                                    "('re:^mtp.*', 're:^model.layers.61.*')", _DOCTOR_FIX),
    "mtp-quantized": Rule(WARNING, "prefer a BF16 head unless its acceptance was measured", _GRAFT),
    "mtp-quant-companions": Rule(ERROR, "re-quantize the module, or graft the BF16 head", None),
    "mtp-norm-convention": Rule(ERROR, "undo the shift of each shifted key (store w, not 1 + w); or re-graft the head "
                                "from the base", _DOCTOR_FIX),
    "fused-group-mixed": Rule(ERROR, "quantize or ignore fused groups whole (q/k/v, gate/up, in_proj_qkv+z, in_proj_b+a)", None),
    "gdn-small-proj-quantized": Rule(WARNING, "keep linear_attn.in_proj_a / in_proj_b in BF16", None),
    "high-precision-quantized": Rule(ERROR, "keep conv1d, A_log, dt_bias, norms and routers unquantized", None),
    "vision-missing-undeclared": Rule(ERROR, "declare the build text-only (language_model_only: true)", _DOCTOR_FIX),
    "vision-present-text-only": Rule(INFO, "drop the unused vision tower", "mtpforge strip {path} --vision --out OUT"),
    "index-missing-shard": Rule(ERROR, "restore the missing file, or re-index", None),
    "index-missing-tensor": Rule(ERROR, "re-index the checkpoint", None),
    "index-total-size": Rule(WARNING, "recompute metadata.total_size as the sum of tensor bytes", _DOCTOR_FIX),
    "shard-orphan": Rule(WARNING, "remove the file or add its tensors to the index", None),
    "header-invalid": Rule(ERROR, "re-download the shard", None),
    "tensor-shape-mismatch": Rule(ERROR, "the tensor does not belong to this config: restore it from the base", None),
    "quant-config-invalid": Rule(ERROR, "restore the quantization config written by the quantizer", None),
    "chat-template-missing": Rule(WARNING, "copy chat_template.jinja from the base model", None),
    "tokenizer-missing": Rule(WARNING, "copy the tokenizer files from the base model", None),
    # mtpforge additions
    "tensor-missing": Rule(ERROR, "restore the missing tensors from the base model", None),
    "tensor-unexpected": Rule(WARNING, "remove the tensors, or fix config.json if they belong to the model", None),
    "quant-declared-mismatch": Rule(ERROR, "make the quantization config describe the weights as stored", None),
    "quant-method-unsupported": Rule(INFO, "mtpforge cannot check this method's storage; check MTP coverage by hand", None),
    "file-outside-checkpoint": Rule(ERROR, "replace the link (or FIFO, device, socket) with the regular file it stands for, "
                                    "copied into the checkpoint directory", None),
    "tensor-duplicated": Rule(ERROR, "keep each tensor in exactly one shard (remove the stale copy) and re-index", None),
    "dtype-cast": Rule(INFO, "nothing to do: the engine casts these float tensors to the config's dtype on load; "
                       "re-export them in that dtype to save the conversion", None),
    "index-unlisted-tensor": Rule(WARNING, "add the tensors to weight_map (or remove them from the shard) and recompute "
                                  "total_size", None),
}


@dataclass(frozen=True)
class Finding:
    """One defect found in a checkpoint."""

    code: str
    message: str
    tensors: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    severity: str = field(default="")

    def __post_init__(self) -> None:
        if self.code not in CATALOGUE:
            raise ValueError(f"unknown finding code {self.code!r}")  # a bug, not user input
        if not self.severity:
            object.__setattr__(self, "severity", CATALOGUE[self.code].severity)

    def to_dict(self, path: str) -> dict[str, Any]:
        rule = CATALOGUE[self.code]
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "tensors": sorted(self.tensors),
            "files": sorted(self.files),
            "fix": rule.fix,
            "command": rule.command.format(path=path) if rule.command else None,
        }


def finding(code: str, message: str, tensors: Any = (), files: Any = ()) -> Finding:
    """A `Finding` with sorted, de-duplicated tensors and files."""
    return Finding(code, message, tuple(sorted(set(tensors))), tuple(sorted(set(files))))
