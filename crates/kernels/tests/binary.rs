//! BiLLM binary matrices: dequantization equals the binarization formula, and every kernel
//! (scalar, AVX-512, NEON) equals `x · dequantize(W)ᵀ` for odd shapes, GEMV and GEMM.

use proptest::prelude::*;
use qwen3_quant_kernels::{
    available_kernels, BinaryMatrix, BinaryParams, KernelError, BINARY_BLOCK,
};

struct Case {
    rows: usize,
    cols: usize,
    signs: Vec<u8>,
    bit1: Vec<u8>,
    salient: Vec<bool>,
    params: Vec<BinaryParams>,
}

fn hash(i: usize, salt: usize) -> usize {
    (i.wrapping_mul(2654435761) ^ salt.wrapping_mul(40503)).wrapping_mul(2246822519) >> 7
}

fn case(rows: usize, cols: usize) -> Case {
    case_seeded(rows, cols, 0)
}

fn case_seeded(rows: usize, cols: usize, seed: usize) -> Case {
    let nb = cols.div_ceil(BINARY_BLOCK);
    let hash = |i: usize, s: usize| hash(i, s.wrapping_add(seed.wrapping_mul(131)));
    let f = |i: usize, s: usize| (hash(i, s) % 2001) as f32 / 1000.0 - 1.0;
    Case {
        rows,
        cols,
        signs: (0..rows * cols).map(|i| (hash(i, 1) & 1) as u8).collect(),
        bit1: (0..rows * cols).map(|i| (hash(i, 2) & 1) as u8).collect(),
        salient: (0..cols).map(|j| hash(j, 3) % 10 == 0).collect(),
        params: (0..rows * nb)
            .map(|i| BinaryParams {
                sparse: [0.01 * f(i, 4), 0.02 * f(i, 5).abs()],
                concentrated: [0.01 * f(i, 6), 0.005 * f(i, 7).abs()],
                salient_first: [0.05 * f(i, 8), 0.1 * f(i, 9).abs()],
                salient_second: [0.01 * f(i, 10), 0.03 * f(i, 11).abs()],
            })
            .collect(),
    }
}

/// BiLLM's dequantization, written from the method's description (§5.4).
fn reference_weight(c: &Case) -> Vec<f32> {
    let nb = c.cols.div_ceil(BINARY_BLOCK);
    let bin = |p: [f32; 2], bit: u8| p[0] + p[1] * if bit == 1 { 1.0 } else { -1.0 };
    let mut w = vec![0f32; c.rows * c.cols];
    for r in 0..c.rows {
        for j in 0..c.cols {
            let p = &c.params[r * nb + j / BINARY_BLOCK];
            let (s, b) = (c.signs[r * c.cols + j], c.bit1[r * c.cols + j]);
            w[r * c.cols + j] = if c.salient[j] {
                bin(p.salient_first, s) + bin(p.salient_second, b)
            } else if b == 1 {
                bin(p.concentrated, s)
            } else {
                bin(p.sparse, s)
            };
        }
    }
    w
}

fn build(c: &Case) -> BinaryMatrix {
    BinaryMatrix::new(c.rows, c.cols, &c.signs, &c.bit1, &c.salient, &c.params).unwrap()
}

#[test]
fn dequantize_is_the_binarization() {
    for &(rows, cols) in &[(1, 1), (3, 77), (5, 128), (4, 300), (17, 1000)] {
        let c = case(rows, cols);
        assert_eq!(
            build(&c).dequantize(),
            reference_weight(&c),
            "{rows}x{cols}"
        );
    }
}

#[test]
fn kernels_match_dequantized_product() {
    for &(rows, cols) in &[(3, 77), (5, 128), (9, 300), (70, 1000), (300, 1024)] {
        check_products(&case(rows, cols), &[1, 3, 7]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random shapes (odd column counts, salient columns anywhere) and parameters.
    #[test]
    fn random_binary_shapes_match_reference(rows in 1usize..12, cols in 1usize..400, seed in 0usize..1_000_000) {
        let c = case_seeded(rows, cols, seed);
        prop_assert_eq!(build(&c).dequantize(), reference_weight(&c));
        check_products(&c, &[1, 6]);
    }
}

/// GEMM for each token count (and GEMV with every kernel for one token) against the f64
/// product with the reference weight.
fn check_products(c: &Case, token_counts: &[usize]) {
    let (rows, cols) = (c.rows, c.cols);
    {
        let m = build(c);
        let w = reference_weight(c);
        for &tokens in token_counts {
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let mut want = vec![0f64; tokens * rows];
            let mut bound = vec![0f64; tokens * rows];
            for t in 0..tokens {
                for r in 0..rows {
                    let (xr, wr) = (&x[t * cols..(t + 1) * cols], &w[r * cols..(r + 1) * cols]);
                    want[t * rows + r] = xr
                        .iter()
                        .zip(wr)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    let n = |v: &[f32]| v.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt();
                    bound[t * rows + r] = 1e-5 * n(xr) * n(wr) + 1e-6;
                }
            }
            let mut y = vec![f32::NAN; tokens * rows];
            m.gemm(&x, tokens, &mut y).unwrap();
            for (i, (&g, &e)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (f64::from(g) - e).abs() <= bound[i],
                    "gemm {rows}x{cols} T{tokens} [{i}]: {g} vs {e}"
                );
            }
            if tokens == 1 {
                for k in available_kernels() {
                    let mut yv = vec![f32::NAN; rows];
                    m.gemv_with(k, &x, &mut yv).unwrap();
                    for (r, (&g, &e)) in yv.iter().zip(&want).enumerate() {
                        assert!(
                            (f64::from(g) - e).abs() <= bound[r],
                            "{k:?} gemv {rows}x{cols} row {r}: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let c = case(2, 130);
    let mut bad = c.signs.clone();
    bad[5] = 2;
    assert!(matches!(
        BinaryMatrix::new(2, 130, &bad, &c.bit1, &c.salient, &c.params),
        Err(KernelError::CodeOutOfRange { index: 5, .. })
    ));
    let mut p = c.params.clone();
    p[1].salient_second[1] = f32::NAN;
    assert!(matches!(
        BinaryMatrix::new(2, 130, &c.signs, &c.bit1, &c.salient, &p),
        Err(KernelError::NonFinite { .. })
    ));
    assert!(matches!(
        BinaryMatrix::new(2, 130, &c.signs, &c.bit1, &c.salient[..129], &c.params),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        BinaryMatrix::new(2, 130, &c.signs, &c.bit1, &c.salient, &c.params[..3]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    let m = build(&c);
    assert!(m.gemv(&[0.0; 129], &mut [0.0; 2]).is_err());
    assert!(m.gemm(&[0.0; 260], 2, &mut [0.0; 3]).is_err());
}

#[test]
fn storage_is_two_bits_plus_metadata() {
    let m = build(&case(64, 4096));
    // 2 bits per weight, a 1-bit column map, four f32 (μ, α) pairs per row and block.
    let expect = 64 * 4096 / 4 + 4096 / 8 + 64 * 32 * 32;
    assert_eq!(m.storage_bytes(), expect);
}
