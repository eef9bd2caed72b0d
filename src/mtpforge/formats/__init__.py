"""Storage formats of quantized weights: the only part of mtpforge that knows a packed tensor's name.

- `schemes.py`: one frozen `Scheme` per format mtpforge writes (the registry
  quant, the fixtures and the CLI read), its stored tensors and its config.
- `stored.py`: which stored tensors make up one logical weight, in any format read.
- `packing.py`: pack / unpack per format (compressed-tensors' own helpers).
- `int_affine.py`, `nvfp4.py`: the quantization arithmetic (torch, compressed-tensors).
- `dequant.py`: stored weights back to floating point, for the reference runtime.
- `synthetic.py`: structurally valid stored tensors for test fixtures.
- `values.py`: tensor bytes to numpy arrays and back, without torch.
"""
