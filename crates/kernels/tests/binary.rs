//! BiLLM binary matrices: dequantization equals the binarization formula with the stored (int8)
//! tables, and every kernel (scalar, AVX-512, NEON; exact and int8-activation GEMV; GEMM) equals
//! `x · dequantize(W)ᵀ` for odd shapes and block sizes.

use proptest::prelude::*;
use qwen3_quant_kernels::{
    available_kernels, table_index, BinaryMatrix, BinaryParams, BinaryTable, KernelError,
    BINARY_BLOCK,
};

struct Case {
    rows: usize,
    cols: usize,
    block: usize,
    signs: Vec<u8>,
    bit1: Vec<u8>,
    salient: Vec<bool>,
    params: Vec<BinaryParams>,
}

fn hash(i: usize, salt: usize) -> usize {
    (i.wrapping_mul(2654435761) ^ salt.wrapping_mul(40503)).wrapping_mul(2246822519) >> 7
}

fn case(rows: usize, cols: usize) -> Case {
    case_seeded(rows, cols, BINARY_BLOCK, 0)
}

fn case_seeded(rows: usize, cols: usize, block: usize, seed: usize) -> Case {
    let nb = cols.div_ceil(block);
    let hash = |i: usize, s: usize| hash(i, s.wrapping_add(seed.wrapping_mul(131)));
    let f = |i: usize, s: usize| (hash(i, s) % 2001) as f32 / 1000.0 - 1.0;
    Case {
        rows,
        cols,
        block,
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

/// BiLLM's dequantization, written from the method's description (reference-methods §5.4), with
/// each (row, block)'s 8 values rounded to the stored table.
fn reference_weight(c: &Case) -> Vec<f32> {
    let nb = c.cols.div_ceil(c.block);
    let bin = |p: [f32; 2], bit: u8| p[0] + p[1] * if bit == 1 { 1.0 } else { -1.0 };
    let mut w = vec![0f32; c.rows * c.cols];
    for r in 0..c.rows {
        for j in 0..c.cols {
            let p = &c.params[r * nb + j / c.block];
            let (s, b) = (c.signs[r * c.cols + j], c.bit1[r * c.cols + j]);
            let exact = if c.salient[j] {
                bin(p.salient_first, s) + bin(p.salient_second, b)
            } else if b == 1 {
                bin(p.concentrated, s)
            } else {
                bin(p.sparse, s)
            };
            let t = BinaryTable::quantize(&p.table()).unwrap();
            let stored = t.values()[table_index(c.salient[j], b, s)];
            assert!((stored - exact).abs() <= 0.5 * t.scale() * (1.0 + 1e-6));
            w[r * c.cols + j] = stored;
        }
    }
    w
}

fn build(c: &Case) -> BinaryMatrix {
    let tables: Vec<BinaryTable> = c
        .params
        .iter()
        .map(|p| p.quantized_table().unwrap())
        .collect();
    BinaryMatrix::from_tables(
        c.rows, c.cols, c.block, &c.signs, &c.bit1, &c.salient, &tables,
    )
    .unwrap()
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
        // `new` (BinaryParams, 128-column blocks) packs the same tables.
        let m = BinaryMatrix::new(rows, cols, &c.signs, &c.bit1, &c.salient, &c.params).unwrap();
        assert_eq!(m.dequantize(), reference_weight(&c));
    }
}

#[test]
fn kernels_match_dequantized_product() {
    for &(rows, cols) in &[(3, 77), (5, 128), (9, 300), (70, 1000), (300, 1024)] {
        check_products(&case(rows, cols), &[1, 3, 7]);
    }
}

#[test]
fn other_block_sizes() {
    for &(rows, cols, block) in &[(6, 200, 64), (9, 400, 192), (5, 520, 256), (7, 64, 512)] {
        let c = case_seeded(rows, cols, block, 7);
        assert_eq!(build(&c).dequantize(), reference_weight(&c));
        check_products(&c, &[1, 5]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random shapes (odd column counts, salient columns anywhere), block sizes and parameters.
    #[test]
    fn random_binary_shapes_match_reference(
        rows in 1usize..12,
        cols in 1usize..400,
        blocks in 1usize..4,
        seed in 0usize..1_000_000,
    ) {
        let c = case_seeded(rows, cols, 64 * blocks, seed);
        prop_assert_eq!(build(&c).dequantize(), reference_weight(&c));
        check_products(&c, &[1, 6]);
    }
}

/// GEMM for each token count (and, for one token, the exact GEMV with every kernel and the
/// int8-activation GEMV) against the f64 product with the reference weight.
fn check_products(c: &Case, token_counts: &[usize]) {
    let (rows, cols) = (c.rows, c.cols);
    let m = build(c);
    let w = reference_weight(c);
    for &tokens in token_counts {
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let mut want = vec![0f64; tokens * rows];
        let mut bound = vec![0f64; tokens * rows];
        let mut q8_bound = vec![0f64; tokens * rows];
        for t in 0..tokens {
            let xr = &x[t * cols..(t + 1) * cols];
            // Int8 activations: one step `dx = max|x| / 127` per block, off by at most dx/2.
            let dx: Vec<f64> = xr
                .chunks(c.block)
                .map(|b| f64::from(b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0))
                .collect();
            for r in 0..rows {
                let wr = &w[r * cols..(r + 1) * cols];
                want[t * rows + r] = xr
                    .iter()
                    .zip(wr)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let n = |v: &[f32]| v.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt();
                bound[t * rows + r] = 1e-5 * n(xr) * n(wr) + 1e-6;
                let rounding: f64 = wr
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| f64::from(v).abs() * dx[j / c.block] / 2.0)
                    .sum();
                q8_bound[t * rows + r] = rounding * (1.0 + 1e-5) + bound[t * rows + r];
            }
        }
        let mut y = vec![f32::NAN; tokens * rows];
        m.gemm(&x, tokens, &mut y).unwrap();
        // More than 4 tokens run the f32 GEMM on the dequantized tiles; up to 4, the decode GEMV.
        let gemm_bound = if tokens > 4 { &bound } else { &q8_bound };
        for (i, (&g, &e)) in y.iter().zip(&want).enumerate() {
            assert!(
                (f64::from(g) - e).abs() <= gemm_bound[i],
                "gemm {rows}x{cols} T{tokens} [{i}]: {g} vs {e}"
            );
        }
        if tokens == 1 {
            for k in available_kernels() {
                let mut yv = vec![f32::NAN; rows];
                m.gemv_with(k, &x, &mut yv).unwrap();
                let mut yq = vec![f32::NAN; rows];
                m.gemv_q8_with(k, &x, &mut yq).unwrap();
                for r in 0..rows {
                    let (g, q, e) = (f64::from(yv[r]), f64::from(yq[r]), want[r]);
                    assert!(
                        (g - e).abs() <= bound[r],
                        "{k:?} gemv {rows}x{cols} b{} row {r}: {g} vs {e}",
                        c.block
                    );
                    assert!(
                        (q - e).abs() <= q8_bound[r],
                        "{k:?} q8 gemv {rows}x{cols} b{} row {r}: {q} vs {e} (bound {})",
                        c.block,
                        q8_bound[r]
                    );
                }
            }
        }
    }
}

/// The int8 kernel really runs where it applies, and its rounding is that of int8 activations:
/// measurable, but far below the bound's worst case on smooth inputs.
#[test]
fn q8_gemv_is_int8_where_it_applies() {
    let c = case(64, 1024);
    let m = build(&c);
    let x: Vec<f32> = (0..1024)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 333.0)
        .collect();
    let (mut ye, mut yq) = (vec![0f32; 64], vec![0f32; 64]);
    m.gemv_exact(&x, &mut ye).unwrap();
    m.gemv_q8(&x, &mut yq).unwrap();
    let diff = ye
        .iter()
        .zip(&yq)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    if m.q8_applies(qwen3_quant_kernels::active_kernel()) {
        assert!(diff > 0.0, "the int8 path should round the activations");
    } else {
        assert_eq!(diff, 0.0);
    }
    let scale = ye.iter().map(|v| v.abs()).fold(0f32, f32::max);
    assert!(diff < 0.01 * scale, "{diff} vs {scale}");
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
    let t = vec![BinaryTable::default(); 4];
    assert!(matches!(
        BinaryMatrix::from_tables(2, 130, 96, &c.signs, &c.bit1, &c.salient, &t),
        Err(KernelError::NotMultiple { value: 96, .. })
    ));
    assert!(matches!(
        BinaryMatrix::from_tables(2, 130, 0, &c.signs, &c.bit1, &c.salient, &t),
        Err(KernelError::InvalidGroupSize { .. })
    ));
    let m = build(&c);
    assert!(m.gemv(&[0.0; 129], &mut [0.0; 2]).is_err());
    assert!(m.gemv_q8(&[0.0; 130], &mut [0.0; 3]).is_err());
    assert!(m.gemm(&[0.0; 260], 2, &mut [0.0; 3]).is_err());
}

#[test]
fn empty_shapes() {
    let m = BinaryMatrix::from_tables(3, 0, 128, &[], &[], &[], &[]).unwrap();
    let mut y = [f32::NAN; 3];
    for k in available_kernels() {
        m.gemv_with(k, &[], &mut y).unwrap();
        assert_eq!(y, [0.0; 3]);
        y = [f32::NAN; 3];
        m.gemv_q8_with(k, &[], &mut y).unwrap();
        assert_eq!(y, [0.0; 3]);
    }
    let mut y6 = [f32::NAN; 6];
    m.gemm(&[], 2, &mut y6).unwrap();
    assert_eq!(m.dequantize(), Vec::<f32>::new());
    let m = BinaryMatrix::from_tables(0, 70, 64, &[], &[], &[false; 70], &[]).unwrap();
    m.gemv(&[1.0; 70], &mut []).unwrap();
}

#[test]
fn storage_is_two_bits_plus_tables() {
    let m = build(&case(64, 4096));
    // 2 bits per weight, a 1-bit column map, 8 int8 codes and a bf16 scale per row and block.
    let expect = 64 * 4096 / 4 + 4096 / 8 + 64 * 32 * 10;
    assert_eq!(m.storage_bytes(), expect);
    let bits = 8.0 * expect as f64 / (64.0 * 4096.0);
    assert!(
        (bits - (2.0 + 80.0 / 128.0 + 1.0 / 64.0)).abs() < 1e-12,
        "{bits}"
    );
    // Columns are padded to 64 for the codes and the map; tables cover partial blocks.
    assert_eq!(
        BinaryMatrix::storage_bytes_for(3, 130, 128),
        3 * 48 + 3 * 8 + 3 * 2 * 10
    );
}
