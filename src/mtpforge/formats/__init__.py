"""Storage formats of quantized weights: which stored tensors make up one weight, how they pack and unpack."""
