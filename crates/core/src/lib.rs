//! Quantization vocabulary: schemes, quantized linears, statistics types and the method trait.
