//! W8A8: exactness of every int8 GEMM implementation, per-token quantization rules.

use proptest::prelude::*;
use qwen3_quant_kernels::int8::{self, Int8Matrix, QuantizedActivations};
use qwen3_quant_kernels::{available_kernels, KernelChoice, KernelError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn check_exact(m: usize, rows: usize, cols: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    // Full i8 range including -128 on both sides.
    let w: Vec<i8> = (0..rows * cols).map(|_| rng.gen::<i8>()).collect();
    let xq: Vec<i8> = (0..m * cols).map(|_| rng.gen::<i8>()).collect();
    let ws: Vec<f32> = (0..rows).map(|_| rng.gen_range(0.001f32..0.1)).collect();
    let xs: Vec<f32> = (0..m).map(|_| rng.gen_range(0.001f32..0.1)).collect();
    let mat = Int8Matrix::new(w.clone(), ws.clone(), rows, cols).unwrap();
    assert_eq!(mat.codes(), w);
    let acc = int8::reference_i32(&xq, &w, m, rows, cols);
    let expected: Vec<f32> = (0..m * rows)
        .map(|i| acc[i] as f32 * (xs[i / rows] * ws[i % rows]))
        .collect();
    for k in available_kernels() {
        let mut y = vec![f32::NAN; m * rows];
        mat.gemm_with(k, &xq, &xs, m, &mut y).unwrap();
        assert_eq!(y, expected, "kernel {k:?} m {m} rows {rows} cols {cols}");
    }
}

#[test]
fn int8_gemm_exact_on_odd_shapes() {
    for &(m, rows, cols) in &[
        (1, 1, 1),
        (3, 5, 17),
        (2, 7, 64),
        (5, 3, 65),
        (4, 70, 129),
        (9, 130, 300),
        (33, 65, 1000),
    ] {
        check_exact(m, rows, cols, (m * 1000 + rows * 10 + cols) as u64);
    }
}

#[test]
fn int8_gemm_exact_at_extremes() {
    // All -128 times all -128: the largest positive products; VNNI's unsigned shift must not overflow.
    let (m, rows, cols) = (2, 3, 4096);
    let w = vec![-128i8; rows * cols];
    let xq = vec![-128i8; m * cols];
    let mat = Int8Matrix::new(w.clone(), vec![1.0; rows], rows, cols).unwrap();
    for k in available_kernels() {
        let mut y = vec![0f32; m * rows];
        mat.gemm_with(k, &xq, &[1.0; 2], m, &mut y).unwrap();
        assert!(y.iter().all(|&v| v == (128 * 128 * 4096) as f32), "{k:?}");
    }
}

#[test]
fn quantize_per_token_rules() {
    // absmax 127 -> scale 1; 2.5 rounds to 2 (half to even), 3.5 to 4, -2.5 to -2.
    let x = [127.0f32, 2.5, 3.5, -2.5, 0.4, -127.0];
    let (q, s) = int8::quantize_per_token(&x, 1, 6);
    assert_eq!(s, vec![1.0]);
    assert_eq!(q, vec![127, 2, 4, -2, 0, -127]);
    // An all-zero row uses the 1e-5 clamp.
    let (q, s) = int8::quantize_per_token(&[0.0; 3], 1, 3);
    assert_eq!(q, vec![0; 3]);
    assert_eq!(s[0], 1e-5 / 127.0);
    // Two tokens get independent scales.
    let (_, s) = int8::quantize_per_token(&[1.0, -2.0, 4.0, 0.5], 2, 2);
    assert_eq!(s, vec![2.0 / 127.0, 4.0 / 127.0]);
    assert!(matches!(
        int8::try_quantize_per_token(&[0.0; 3], 2, 2),
        Err(KernelError::ShapeMismatch { .. })
    ));
}

#[test]
fn w8a8_end_to_end_close_to_f32() {
    let mut rng = StdRng::seed_from_u64(9);
    let (m, rows, cols) = (4, 16, 256);
    let x: Vec<f32> = (0..m * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let wf: Vec<f32> = (0..rows * cols)
        .map(|_| rng.gen_range(-0.1f32..0.1))
        .collect();
    let (wq, ws) = int8::quantize_per_token(&wf, rows, cols);
    let (xq, xs) = int8::quantize_per_token(&x, m, cols);
    let mat = Int8Matrix::new(wq, ws, rows, cols).unwrap();
    let mut y = vec![0f32; m * rows];
    mat.gemm(&xq, &xs, m, &mut y).unwrap();
    for i in 0..m {
        for r in 0..rows {
            let exact: f32 = (0..cols).map(|k| x[i * cols + k] * wf[r * cols + k]).sum();
            assert!(
                (y[i * rows + r] - exact).abs() < 0.05,
                "{} vs {exact}",
                y[i * rows + r]
            );
        }
    }
}

#[test]
fn int8_bad_inputs() {
    assert!(matches!(
        Int8Matrix::new(vec![0; 5], vec![1.0; 2], 2, 3),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        Int8Matrix::new(vec![0; 6], vec![1.0; 3], 2, 3),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        Int8Matrix::new(vec![0; 6], vec![f32::NAN, 1.0], 2, 3),
        Err(KernelError::NonFinite { .. })
    ));
    let mat = Int8Matrix::new(vec![0; 6], vec![1.0; 2], 2, 3).unwrap();
    let mut y = [0f32; 4];
    assert!(matches!(
        mat.gemm(&[0; 5], &[1.0; 2], 2, &mut y),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        mat.gemm(&[0; 6], &[1.0; 1], 2, &mut y),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        mat.gemm(&[0; 6], &[1.0; 2], 2, &mut y[..3]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(mat
        .gemm_with(KernelChoice::Scalar, &[0; 6], &[1.0; 2], 2, &mut y)
        .is_ok());
}

#[test]
fn int8_gemm_exact_on_parallel_shapes() {
    // Several 96-token × 64-row blocks with ragged edges: the rayon path of every kernel.
    for &(m, rows, cols) in &[(150, 200, 300), (97, 70, 1030), (6, 1100, 260)] {
        check_exact(m, rows, cols, (m + rows + cols) as u64);
    }
}

#[test]
fn quantized_activations_agree_across_kernels() {
    let mut rng = StdRng::seed_from_u64(3);
    for &(m, cols) in &[(1, 1), (3, 17), (5, 64), (4, 100), (40, 515)] {
        let mut x: Vec<f32> = (0..m * cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        // Exact ties at absmax 127·k: x = 2.5 → 2, 3.5 → 4, -0.5 → 0 at scale 1.
        if cols >= 4 {
            x[..4].copy_from_slice(&[127.0, 2.5, 3.5, -0.5]);
        }
        for bits in 2..=8u8 {
            let reference =
                QuantizedActivations::quantize_with(KernelChoice::Scalar, &x, m, cols, bits)
                    .unwrap();
            let qmax = (1i32 << (bits - 1)) - 1;
            // The rule itself, per token.
            for i in 0..m {
                let row = &x[i * cols..(i + 1) * cols];
                let s = row.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-5) / qmax as f32;
                assert_eq!(reference.scales()[i], s);
                for (k, &v) in row.iter().enumerate() {
                    let c = (v / s).round_ties_even().clamp(-qmax as f32, qmax as f32) as i8;
                    assert_eq!(reference.codes()[i * cols + k], c);
                }
            }
            if cols >= 4 && bits == 8 {
                assert_eq!(&reference.codes()[..4], &[127, 2, 4, 0]);
            }
            for k in available_kernels() {
                let q = QuantizedActivations::quantize_with(k, &x, m, cols, bits).unwrap();
                assert_eq!(q, reference, "{k:?} m {m} cols {cols} bits {bits}");
            }
            let deq = reference.dequantize();
            assert_eq!(
                deq[0],
                f32::from(reference.codes()[0]) * reference.scales()[0]
            );
        }
    }
}

#[test]
fn non_finite_tokens_give_nan_rows_only() {
    let (m, rows, cols) = (3, 5, 40);
    let mut x = vec![0.5f32; m * cols];
    x[cols + 7] = f32::NAN;
    x[2 * cols + 3] = f32::INFINITY;
    let mat = Int8Matrix::new(vec![1; rows * cols], vec![0.1; rows], rows, cols).unwrap();
    for k in available_kernels() {
        let q = QuantizedActivations::quantize_with(k, &x, m, cols, 8).unwrap();
        assert!(q.scales()[0].is_finite() && q.scales()[1].is_nan() && q.scales()[2].is_nan());
        let mut y = vec![0f32; m * rows];
        mat.gemm_quantized_with(k, &q, &mut y).unwrap();
        assert!(y[..rows].iter().all(|v| v.is_finite()), "{k:?}");
        assert!(y[rows..].iter().all(|v| v.is_nan()), "{k:?}");
    }
}

#[test]
fn weight_codes_round_trip_and_bad_activation_inputs() {
    let mut rng = StdRng::seed_from_u64(11);
    let (rows, cols) = (19, 23);
    let w: Vec<i8> = (0..rows * cols).map(|_| rng.gen::<i8>()).collect();
    let s: Vec<f32> = (0..rows).map(|_| rng.gen_range(0.01f32..1.0)).collect();
    let mat = Int8Matrix::new(w.clone(), s.clone(), rows, cols).unwrap();
    assert_eq!(mat.codes(), w);
    assert_eq!(mat.scales(), &s[..]);
    let deq = mat.dequantize();
    assert_eq!(deq[cols + 2], f32::from(w[cols + 2]) * s[1]);
    assert!(matches!(
        int8::symmetric_qmax(1),
        Err(KernelError::UnsupportedBits { bits: 1 })
    ));
    assert_eq!(int8::symmetric_qmax(4), Ok(7));
    for bits in [0u8, 1, 9] {
        assert!(matches!(
            QuantizedActivations::quantize(&[1.0; 4], 2, 2, bits),
            Err(KernelError::UnsupportedBits { .. })
        ));
    }
    assert!(matches!(
        QuantizedActivations::quantize(&[1.0; 5], 2, 2, 8),
        Err(KernelError::ShapeMismatch { .. })
    ));
    let q = QuantizedActivations::quantize(&[1.0; 24], 1, 24, 8).unwrap();
    let mut y = vec![0f32; rows];
    assert!(matches!(
        mat.gemm_quantized(&q, &mut y),
        Err(KernelError::ShapeMismatch { .. })
    ));
    let q = QuantizedActivations::quantize(&[1.0; 23], 1, 23, 8).unwrap();
    assert!(matches!(
        mat.gemm_quantized(&q, &mut y[..rows - 1]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        Int8Matrix::new(vec![0; int8::MAX_COLS + 1], vec![1.0], 1, int8::MAX_COLS + 1),
        Err(KernelError::ShapeMismatch { expected, .. }) if expected == int8::MAX_COLS
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn int8_gemm_exact_random(m in 1usize..7, rows in 1usize..20, cols in 1usize..300, seed in any::<u64>()) {
        check_exact(m, rows, cols, seed);
    }
}
