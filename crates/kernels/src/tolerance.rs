//! Documented accuracy of the packed kernels against the f32 reference `x · dequantize(W)ᵀ`.
//!
//! For an output element `y = Σ_j x_j · w_j`, the kernels guarantee (and the tests check)
//! `|y_kernel − y_ref| ≤ TOL · ‖x‖₂ · ‖w‖₂ + ABS_FLOOR`, where `w` is the dequantized row. The
//! constants are per bit width: wider codes accumulate larger integer-valued partial sums
//! (`Σ code·x`) before scaling, so their f32 rounding is relatively larger.

/// Relative tolerance for 1-bit codes.
pub const REL_TOL_1BIT: f32 = 2e-5;
/// Relative tolerance for 2-bit codes.
pub const REL_TOL_2BIT: f32 = 3e-5;
/// Relative tolerance for 3-bit codes.
pub const REL_TOL_3BIT: f32 = 5e-5;
/// Relative tolerance for 4-bit codes.
pub const REL_TOL_4BIT: f32 = 1e-4;
/// Relative tolerance for 8-bit codes.
pub const REL_TOL_8BIT: f32 = 1e-4;
/// Absolute floor added to every bound (guards exact-zero references).
pub const ABS_FLOOR: f32 = 1e-6;

/// The relative tolerance for a bit width (the 8-bit one for anything unknown).
pub fn rel_tol(bits: u8) -> f32 {
    match bits {
        1 => REL_TOL_1BIT,
        2 => REL_TOL_2BIT,
        3 => REL_TOL_3BIT,
        4 => REL_TOL_4BIT,
        _ => REL_TOL_8BIT,
    }
}

/// Error bound of the int8-activation GEMV ([`crate::PackedMatrix::gemv_q8`]) against
/// `x · dequantize(W)ᵀ` for one output: `Σ_j |scale·code_j| · dx_j / 2` (each activation is off by
/// at most half its block's step `dx = max|x| / 127`), plus f32 rounding of the exact kernel's
/// size. `code_term_abs_dx` is that sum without the ½ (the caller computes it from the codes);
/// by Cauchy–Schwarz it is at most `√128 / 127 · ‖x‖₂ · ‖scale·code‖₂`.
pub fn q8_gemv_bound(code_term_abs_dx: f32, x_norm: f32, w_norm: f32) -> f32 {
    0.5 * code_term_abs_dx * (1.0 + 1e-5) + REL_TOL_4BIT * x_norm * w_norm + ABS_FLOOR
}
