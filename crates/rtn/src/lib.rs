//! Round-to-nearest weight quantization (per-channel, per-group, GPTQ and AWQ conventions, MSE clip search).
