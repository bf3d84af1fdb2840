//! Several GEMVs over the same activations in one parallel region: a decode step's q/k/v, or
//! gate/up. Separate [`PackedMatrix::gemv`] calls pay one fork/join each, and on a two-core
//! machine the small k/v matrices (1 MB at 4 bits for Qwen3-1.7B) are over before a second
//! thread is well started; here the row blocks of all the matrices are one list of tasks.

use rayon::prelude::*;

use super::{gemv_exact_only, PackedMatrix};
use crate::{active_kernel, check_len, Result};

impl PackedMatrix {
    /// `ys[i] = mats[i] · x` for matrices with the same number of columns: the same numbers as
    /// [`PackedMatrix::gemv`] on each (bit for bit: each row runs the same kernel on the same
    /// int8 activations), with the row blocks of every matrix in one parallel region. Where the
    /// int8-activation kernel does not apply to all of them (see
    /// [`PackedMatrix::q8_gemv_applies`], `QWEN3_QUANT_GEMV=exact`), it is `gemv` on each in turn.
    ///
    /// ```
    /// use qwen3_quant_kernels::PackedMatrix;
    /// let (cols, gs) = (256, 128);
    /// let make = |rows: usize| {
    ///     let codes: Vec<u8> = (0..rows * cols).map(|i| (i % 16) as u8).collect();
    ///     let params = vec![0.01f32; rows * cols / gs];
    ///     PackedMatrix::new(4, rows, cols, gs, &codes, &params, &params, None).unwrap()
    /// };
    /// let (q, k) = (make(64), make(32));
    /// let x: Vec<f32> = (0..cols).map(|i| (i as f32 - 100.0) / 50.0).collect();
    /// let (mut yq, mut yk) = (vec![0.0; 64], vec![0.0; 32]);
    /// PackedMatrix::gemv_many(&[&q, &k], &x, &mut [&mut yq, &mut yk])?;
    /// let mut alone = vec![0.0; 32];
    /// k.gemv(&x, &mut alone)?;
    /// assert_eq!(yk, alone);
    /// # Ok::<(), qwen3_quant_kernels::KernelError>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::KernelError::ShapeMismatch`] if `mats` and `ys` differ in length, a matrix's columns
    /// differ from `x.len()`, or `ys[i].len()` from its rows.
    pub fn gemv_many(mats: &[&PackedMatrix], x: &[f32], ys: &mut [&mut [f32]]) -> Result<()> {
        check_len("outputs", mats.len(), ys.len())?;
        for (m, y) in mats.iter().zip(ys.iter()) {
            check_len("x", m.cols, x.len())?;
            check_len("y", m.rows, y.len())?;
        }
        let choice = active_kernel().clamp_to_supported();
        let fused = rayon::current_num_threads() > 1
            && !gemv_exact_only()
            && mats.iter().all(|m| m.q8_applies(choice) && m.rows > 0);
        if !fused {
            for (m, y) in mats.iter().zip(ys.iter_mut()) {
                m.gemv(x, y)?;
            }
            return Ok(());
        }
        fused_q8(choice, mats, x, ys);
        Ok(())
    }
}

/// The fused int8-activation GEMVs; the caller checked shapes and that the kernel applies.
#[cfg(all(target_arch = "x86_64", qwen3_avx512))]
fn fused_q8(choice: crate::KernelChoice, mats: &[&PackedMatrix], x: &[f32], ys: &mut [&mut [f32]]) {
    let gfni = crate::dispatch::cpu().gfni;
    // Each matrix's activations in its storage order, quantized and arranged for its kernel.
    let preps: Vec<_> = mats
        .iter()
        .map(|m| {
            let (mut xs, mut xsum) = (Vec::new(), Vec::new());
            m.prepare_x(x, &mut xs, &mut xsum);
            let prep = m.q8_prep(&xs);
            (xsum, prep)
        })
        .collect();
    let views: Vec<_> = mats
        .iter()
        .zip(&preps)
        .map(|(m, (xsum, prep))| crate::arch::x86_avx512::Q8View {
            bits: m.bits,
            pad: m.pad_cols,
            row_bytes: m.row_bytes,
            xq_a: &prep.xq_a,
            dx_a: &prep.dx_a,
            gidx: &prep.gidx,
            xsum,
            n_groups: m.n_groups,
            gfni,
        })
        .collect();
    // Row blocks as `gemv_q8` sizes them (multiples of 4 rows, about 16 per thread over all the
    // matrices together).
    let total: usize = mats.iter().map(|m| m.rows).sum();
    let chunk = (total / (rayon::current_num_threads() * 16))
        .max(64)
        .next_multiple_of(4);
    let tasks: Vec<(usize, usize, &mut [f32])> = ys
        .iter_mut()
        .enumerate()
        .flat_map(|(i, y)| {
            y.chunks_mut(chunk)
                .enumerate()
                .map(move |(c, ys)| (i, c * chunk, ys))
        })
        .collect();
    tasks.into_par_iter().for_each(|(i, r0, ys)| {
        // SAFETY: `q8_applies` checked the CPU features of `choice` for every matrix; rows
        // r0..r0 + ys.len() < rows of matrix i; the view was built by `q8_prep` for it.
        unsafe { mats[i].q8_rows(choice, &views[i], r0, ys) }
    });
}

#[cfg(not(all(target_arch = "x86_64", qwen3_avx512)))]
fn fused_q8(_: crate::KernelChoice, _: &[&PackedMatrix], _: &[f32], _: &mut [&mut [f32]]) {
    unreachable!("the int8-activation GEMV exists only with AVX-512")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::packed_matrix as matrix;

    /// One parallel region gives every matrix exactly what its own GEMV gives: q/k/v-like and
    /// gate/up-like groups, several widths, act-order permutations, sizes below and above the
    /// parallel threshold, and a group the int8 kernel does not take (8-bit codes).
    #[test]
    fn fused_gemvs_equal_separate_ones_bit_for_bit() {
        let _g = crate::test_support::hold_globals();
        let cols = 1024;
        let x: Vec<f32> = (0..cols)
            .map(|i| (((i * 7919) % 1013) as f32 - 506.0) / 200.0)
            .collect();
        for group in [
            vec![
                matrix(4, 1024, cols, 128, 1, false),
                matrix(4, 512, cols, 128, 2, false),
                matrix(4, 512, cols, 128, 3, false),
            ],
            vec![
                matrix(4, 3000, cols, 128, 4, true),
                matrix(4, 3000, cols, 128, 5, true),
            ],
            vec![
                matrix(3, 700, cols, 128, 6, false),
                matrix(2, 300, cols, cols, 7, false),
                matrix(1, 65, cols, 128, 8, true),
            ],
            vec![
                matrix(4, 16, cols, 128, 9, false),
                matrix(4, 8, cols, 128, 10, false),
            ],
            vec![
                matrix(8, 256, cols, 128, 11, false),
                matrix(4, 256, cols, 128, 12, false),
            ],
        ] {
            let mats: Vec<&PackedMatrix> = group.iter().collect();
            let mut outs: Vec<Vec<f32>> = group.iter().map(|m| vec![f32::NAN; m.rows]).collect();
            let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|v| v.as_mut_slice()).collect();
            PackedMatrix::gemv_many(&mats, &x, &mut refs).unwrap();
            for (m, got) in group.iter().zip(&outs) {
                let mut want = vec![0.0; m.rows];
                m.gemv(&x, &mut want).unwrap();
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{} bits, {} rows",
                    m.bits,
                    m.rows
                );
            }
        }
        // Shapes are checked.
        let (a, b) = (
            matrix(4, 32, cols, 128, 1, false),
            matrix(4, 16, 512, 128, 2, false),
        );
        let (mut ya, mut yb) = (vec![0.0; 32], vec![0.0; 16]);
        assert!(PackedMatrix::gemv_many(&[&a, &b], &x, &mut [&mut ya, &mut yb]).is_err());
        assert!(PackedMatrix::gemv_many(&[&a], &x, &mut [&mut ya, &mut yb]).is_err());
        assert!(PackedMatrix::gemv_many(&[&a], &x, &mut [&mut yb]).is_err());
    }
}
