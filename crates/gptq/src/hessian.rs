//! Hessian preparation: dead columns, act-order permutation, damping and the upper Cholesky
//! factor of `H⁻¹` (shared with BiLLM: `qwen3_quant_core::linalg`, faer, f64).

/// Stable descending order of `diag` (ties keep the original column order).
///
/// `torch.argsort(descending=True)` does not promise an order for ties; we pick the stable one so
/// results are deterministic (e.g. `H = I` keeps the identity order).
pub fn act_order_perm(diag: &[f32]) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..diag.len() as u32).collect();
    idx.sort_by(|&a, &b| diag[b as usize].total_cmp(&diag[a as usize]));
    idx
}
