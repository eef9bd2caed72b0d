"""formats/: packing round-trips, one scheme registry that the CLI and the fixtures read, and packed tensor
names known to formats/ alone."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mtpforge
from mtpforge.formats.stored import COMPANION_SUFFIXES

PACKAGE = Path(mtpforge.__file__).parent
shapes = st.tuples(st.integers(1, 40), st.integers(1, 300))


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([4, 8]), shape=shapes, dim=st.sampled_from([0, 1]), seed=st.integers(0, 2**32 - 1))
def test_int_unpack_inverts_pack(bits: int, shape: tuple[int, int], dim: int, seed: int) -> None:
    torch = pytest.importorskip("torch")
    from mtpforge.formats.packing import pack_int, unpack_int

    g = torch.Generator().manual_seed(seed)
    values = torch.randint(-(1 << bits - 1), 1 << bits - 1, shape, generator=g, dtype=torch.int8)
    packed = pack_int(values, bits, dim=dim)
    assert packed.dtype == torch.int32
    words = -(-shape[dim] * bits // 32)
    assert packed.shape == ((shape[0], words) if dim == 1 else (words, shape[1]))
    assert torch.equal(unpack_int(packed, bits, shape, dim=dim), values)


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_fp4_unpack_inverts_pack_including_negative_zero(shape: tuple[int, int], seed: int) -> None:
    torch = pytest.importorskip("torch")
    from mtpforge.formats.packing import pack_fp4, unpack_fp4

    rows, cols = shape[0], shape[1] * 2
    g = torch.Generator().manual_seed(seed)
    e2m1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    signs = torch.where(torch.rand(rows, cols, generator=g) < 0.5, -1.0, 1.0)
    values = (e2m1[torch.randint(0, 8, (rows, cols), generator=g)] * signs).to(torch.bfloat16)  # 0 * -1 is -0.0
    packed = pack_fp4(values)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, cols // 2)
    back = unpack_fp4(packed)
    assert back.dtype == torch.bfloat16 and torch.equal(back, values) and torch.equal(back.signbit(), values.signbit())
    assert torch.equal(pack_fp4(back), packed)  # and every byte is a pair of codes: bytes -> values -> the same bytes


def test_the_cli_offers_the_registry() -> None:
    from mtpforge.cli.app import quantize
    from mtpforge.formats.schemes import CHECKPOINT_FORMATS, QUANTIZE_SCHEMES, SCHEMES

    choices = {p.name: tuple(getattr(p.type, "choices", ())) for p in quantize.params}
    assert choices["scheme"] == QUANTIZE_SCHEMES and set(QUANTIZE_SCHEMES) < set(SCHEMES)
    assert choices["checkpoint_format"] == CHECKPOINT_FORMATS


@pytest.mark.parametrize("name", ["w4a16", "w4a16-asym", "w8a16", "w8a16-asym", "nvfp4a16", "nvfp4", "modelopt-nvfp4"])
def test_each_scheme_stores_what_the_recogniser_reads(name: str) -> None:
    from mtpforge.formats.schemes import SCHEMES
    from mtpforge.formats.stored import resolve

    scheme = SCHEMES[name]
    group = scheme.default_group
    stored = scheme.companions(256, 512, group)

    class Info:
        def __init__(self, key: str) -> None:
            self.name, (self.dtype, self.shape) = f"m.{key}", stored[key]
            self.shard, self.begin, self.end, self.numel, self.nbytes = "s", 0, 0, math.prod(self.shape), 0

    weight = resolve({f"m.{k}": Info(k) for k in stored}, lambda info: [256, 512])["m.weight"]
    assert (weight.format, weight.bits, weight.shape) == (scheme.stored_format, scheme.bits, (256, 512))
    assert not weight.missing and not weight.problems
    _config, hf_quant = scheme.quantization_config(["lm_head"], group=group)
    assert (hf_quant is not None) == (scheme.checkpoint_format == "modelopt")


def _names_in(path: Path) -> list[str]:
    pattern = re.compile(r"\b(" + "|".join(COMPANION_SUFFIXES) + r")\b")
    tree = ast.parse(path.read_text())
    return [f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and pattern.search(node.value)]


def test_no_module_outside_formats_knows_a_packed_tensor_name() -> None:
    outside = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "formats"]
    assert len(outside) > 50
    assert [hit for p in sorted(outside) for hit in _names_in(p)] == []
    assert _names_in(PACKAGE / "formats" / "schemes.py")  # the check does see names where they are
