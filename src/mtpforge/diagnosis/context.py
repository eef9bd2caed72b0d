"""What every doctor check reads: the checkpoint, its family, and the expected inventory."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from mtpforge.checkpoint import Checkpoint
from mtpforge.checkpoint.quant_config import QuantConfig
from mtpforge.families import MTP, VISION, Family, Inventory, expected_inventory
from mtpforge.formats.stored import StoredWeight


@dataclass
class Context:
    """A checkpoint seen through its family's rules."""

    ckpt: Checkpoint
    family: Family

    @property
    def config(self) -> dict:
        return self.ckpt.config

    @cached_property
    def mtp_layers(self) -> int:
        return self.family.mtp_layers(self.config)

    @cached_property
    def expected(self) -> Inventory:
        """The inventory the config implies; vision only where the build still declares it."""
        # The stored weights' names, not every stored tensor's: a quantized weight's companions say nothing
        # more about the layout, and the family reads each name (a quarter of the names on an NVFP4 MoE).
        inv = expected_inventory(self.family, self.config, self.stored)
        if self.family.language_model_only(self.config):
            return type(inv)({n: s for n, s in inv.items() if s.group != VISION})
        return inv

    @cached_property
    def stored(self) -> dict[str, StoredWeight]:
        return self.ckpt.stored

    @property
    def quant_configs(self) -> list[QuantConfig]:
        return self.ckpt.quant_configs

    @cached_property
    def groups(self) -> dict[str, str]:
        """Each stored weight's group: the inventory's word where it expects the weight, the name's otherwise.

        Asked once per weight, not once per stored tensor and check: the name rule splits every name,
        which on a 400K-tensor MoE index costs seconds each time.
        """
        expected, group_of = self.expected, self.family.group_of
        return {n: spec.group if (spec := expected.get(n)) is not None else group_of(n) for n in self.stored}

    def stored_in(self, group: str) -> list[str]:
        """The stored weights of `group`, sorted."""
        return sorted(n for n, g in self.groups.items() if g == group)

    def loaded_mtp(self) -> list[str]:
        """The MTP head's stored weights (a quantized weight counted once, under its `.weight` name)."""
        return self.stored_in(MTP)
