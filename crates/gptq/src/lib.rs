//! GPTQ: Hessian-based sequential weight quantization with act-order and groups.
