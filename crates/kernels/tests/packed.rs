//! PackedMatrix: layout round trips, gemv/gemm against `x · dequantize(W)ᵀ` for every kernel,
//! SIMD against scalar, and error handling.

use proptest::prelude::*;
use qwen3_quant_kernels::{available_kernels, tolerance, KernelChoice, KernelError, PackedMatrix};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Case {
    bits: u8,
    rows: usize,
    cols: usize,
    gs: usize,
    codes: Vec<u8>,
    scales: Vec<f32>,
    offsets: Vec<f32>,
    perm: Option<Vec<u32>>,
}

fn make_case(
    rng: &mut StdRng,
    bits: u8,
    rows: usize,
    cols: usize,
    gs: usize,
    with_perm: bool,
) -> Case {
    let ng = cols.div_ceil(gs);
    let max = (1u16 << bits) - 1;
    let codes = (0..rows * cols)
        .map(|_| rng.gen_range(0..=max) as u8)
        .collect();
    let scales: Vec<f32> = (0..rows * ng)
        .map(|_| rng.gen_range(0.001f32..0.1))
        .collect();
    let offsets = scales
        .iter()
        .map(|s| -s * rng.gen_range(0.0..=max as f32))
        .collect();
    let perm = with_perm.then(|| {
        let mut p: Vec<u32> = (0..cols as u32).collect();
        for i in (1..cols).rev() {
            p.swap(i, rng.gen_range(0..=i));
        }
        p
    });
    Case {
        bits,
        rows,
        cols,
        gs,
        codes,
        scales,
        offsets,
        perm,
    }
}

fn build(c: &Case) -> PackedMatrix {
    PackedMatrix::new(
        c.bits,
        c.rows,
        c.cols,
        c.gs,
        &c.codes,
        &c.scales,
        &c.offsets,
        c.perm.clone(),
    )
    .unwrap()
}

/// W in original column order straight from the definition.
fn dense_reference(c: &Case) -> Vec<f32> {
    let ng = c.cols.div_ceil(c.gs);
    let mut w = vec![0f32; c.rows * c.cols];
    for r in 0..c.rows {
        for j in 0..c.cols {
            let g = j / c.gs;
            let v =
                c.scales[r * ng + g] * f32::from(c.codes[r * c.cols + j]) + c.offsets[r * ng + g];
            let oj = c.perm.as_ref().map_or(j, |p| p[j] as usize);
            w[r * c.cols + oj] = v;
        }
    }
    w
}

/// Checks `y [m, rows]` against `x · wᵀ` (f64) within the documented tolerance.
#[allow(clippy::too_many_arguments)]
fn check(bits: u8, x: &[f32], m: usize, w: &[f32], rows: usize, cols: usize, y: &[f32], ctx: &str) {
    let tol = tolerance::rel_tol(bits);
    for i in 0..m {
        let xr = &x[i * cols..(i + 1) * cols];
        let xn = xr.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            let wn = wr.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
            let reference: f64 = xr
                .iter()
                .zip(wr)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let got = f64::from(y[i * rows + r]);
            let bound = f64::from(tol) * xn * wn + f64::from(tolerance::ABS_FLOOR);
            assert!(
                (got - reference).abs() <= bound,
                "{ctx}: token {i} row {r}: got {got}, reference {reference}, bound {bound}"
            );
        }
    }
}

fn run_case(rng: &mut StdRng, c: &Case, ms: &[usize]) {
    let p = build(c);
    let ctx0 = format!(
        "bits {} rows {} cols {} gs {} perm {}",
        c.bits,
        c.rows,
        c.cols,
        c.gs,
        c.perm.is_some()
    );
    assert_eq!(p.unpack_codes(), c.codes, "{ctx0}: unpack");
    let w = dense_reference(c);
    let deq = p.dequantize();
    for (a, b) in deq.iter().zip(&w) {
        assert!(
            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
            "{ctx0}: dequantize {a} vs {b}"
        );
    }
    for &m in ms {
        let x: Vec<f32> = (0..m * c.cols)
            .map(|_| rng.gen_range(-1.0f32..1.0))
            .collect();
        let mut scalar = vec![f32::NAN; m * c.rows];
        p.gemm_with(KernelChoice::Scalar, &x, m, &mut scalar)
            .unwrap();
        for k in available_kernels() {
            let ctx = format!("{ctx0} m {m} kernel {k:?}");
            let mut y = vec![f32::NAN; m * c.rows];
            p.gemm_with(k, &x, m, &mut y).unwrap();
            check(
                c.bits,
                &x,
                m,
                &w,
                c.rows,
                c.cols,
                &y,
                &format!("{ctx} gemm"),
            );
            // SIMD against scalar, same tolerance.
            check(
                c.bits,
                &x,
                m,
                &w,
                c.rows,
                c.cols,
                &scalar,
                &format!("{ctx} scalar gemm"),
            );
            if m >= 1 {
                let mut yv = vec![f32::NAN; c.rows];
                p.gemv_with(k, &x[..c.cols], &mut yv).unwrap();
                check(
                    c.bits,
                    &x[..c.cols],
                    1,
                    &w,
                    c.rows,
                    c.cols,
                    &yv,
                    &format!("{ctx} gemv"),
                );
                let tol = tolerance::rel_tol(c.bits);
                for (a, b) in yv.iter().zip(&scalar[..c.rows]) {
                    let scale = (a.abs() + b.abs()).max(1.0) * tol * 8.0;
                    assert!(
                        (a - b).abs() <= scale.max(1e-3 * tol),
                        "{ctx}: simd {a} vs scalar {b}"
                    );
                }
            }
        }
        // The default entry points agree with an explicit kernel.
        let mut y = vec![0f32; m * c.rows];
        p.gemm(&x, m, &mut y).unwrap();
        check(
            c.bits,
            &x,
            m,
            &w,
            c.rows,
            c.cols,
            &y,
            &format!("{ctx0} m {m} default gemm"),
        );
    }
}

#[test]
fn every_width_group_and_odd_shape() {
    let mut rng = StdRng::seed_from_u64(0);
    let shapes = [
        (1usize, 1usize),
        (3, 17),
        (5, 130),
        (2, 257),
        (7, 300),
        (1, 128),
        (4, 64),
    ];
    for bits in [1u8, 2, 3, 4, 8] {
        for &(rows, cols) in &shapes {
            // 32/64/128, per-channel, and group sizes that do not align to 16 columns.
            for gs in [32usize, 64, 128, cols, 48, 20, 7] {
                for with_perm in [false, true] {
                    let c = make_case(&mut rng, bits, rows, cols, gs, with_perm);
                    run_case(&mut rng, &c, &[1, 3, 6]);
                }
            }
        }
    }
}

#[test]
fn larger_shapes_take_parallel_and_tiled_paths() {
    let mut rng = StdRng::seed_from_u64(1);
    // rows > GEMM row block (256), cols > K panel (512) and not a multiple of 128, > 4 tokens.
    for bits in [2u8, 3, 4, 8] {
        let c = make_case(&mut rng, bits, 300, 700, 128, bits == 3);
        run_case(&mut rng, &c, &[9]);
    }
    // GEMV large enough for the rayon path, per-channel and g64.
    for (bits, gs) in [(4u8, 4096usize), (1, 64)] {
        let c = make_case(&mut rng, bits, 80, 4096, gs, bits == 1);
        run_case(&mut rng, &c, &[1]);
    }
}

#[test]
fn billm_style_binary_groups() {
    // scale = 2α, offset = μ − α: code 1 → μ + α, code 0 → μ − α.
    let (alpha, mu) = (0.25f32, 0.5f32);
    let codes = [1u8, 0, 1, 1, 0, 0, 1, 0];
    let p = PackedMatrix::new(1, 1, 8, 8, &codes, &[2.0 * alpha], &[mu - alpha], None).unwrap();
    let w = p.dequantize();
    for (c, v) in codes.iter().zip(&w) {
        assert_eq!(*v, if *c == 1 { mu + alpha } else { mu - alpha });
    }
    let x = [1.0f32; 8];
    for k in available_kernels() {
        let mut y = [0f32];
        p.gemv_with(k, &x, &mut y).unwrap();
        assert!((y[0] - w.iter().sum::<f32>()).abs() < 1e-5, "{k:?}");
    }
}

#[test]
fn perm_semantics_and_accessors() {
    // storage column j holds original column perm[j].
    let codes = [1u8, 2, 3];
    let p = PackedMatrix::new(4, 1, 3, 3, &codes, &[1.0], &[0.0], Some(vec![2, 0, 1])).unwrap();
    assert_eq!(p.dequantize(), vec![2.0, 3.0, 1.0]);
    assert_eq!(p.unpack_codes(), codes.to_vec());
    assert_eq!(p.perm(), Some(&[2u32, 0, 1][..]));
    assert_eq!((p.rows(), p.cols(), p.bits(), p.group_size()), (1, 3, 4, 3));
    assert_eq!(p.scales(), &[1.0]);
    assert_eq!(p.offsets(), &[0.0]);
    let mut y = [0f32];
    p.gemv_exact(&[1.0, 10.0, 100.0], &mut y).unwrap();
    assert_eq!(y[0], 2.0 + 30.0 + 100.0);
    // padded to 128 columns: 64 bytes of codes + scale + offset + 3 perm entries.
    assert_eq!(p.storage_bytes(), 64 + 8 + 12);
}

#[test]
fn storage_is_honest_for_4bit_g128() {
    let p = qwen3_quant_kernels::bench::random_packed(4, 256, 4096, 128, 3).unwrap();
    assert_eq!(p.storage_bytes(), 256 * 4096 / 2 + 2 * 4 * 256 * 32);
    let p3 = qwen3_quant_kernels::bench::random_packed(3, 16, 1024, 128, 3).unwrap();
    assert_eq!(p3.storage_bytes(), 16 * 1024 * 3 / 8 + 2 * 4 * 16 * 8);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let ok_codes = [0u8; 8];
    let new = |bits: u8, gs: usize, codes: &[u8], s: &[f32], o: &[f32], perm: Option<Vec<u32>>| {
        PackedMatrix::new(bits, 2, 4, gs, codes, s, o, perm)
    };
    for bits in [0u8, 5, 6, 7, 9, 16] {
        assert!(matches!(
            new(bits, 4, &ok_codes, &[1.0; 2], &[0.0; 2], None),
            Err(KernelError::UnsupportedBits { .. })
        ));
    }
    assert!(matches!(
        new(4, 0, &ok_codes, &[1.0; 2], &[0.0; 2], None),
        Err(KernelError::InvalidGroupSize { .. })
    ));
    assert!(matches!(
        new(4, 4, &ok_codes[..7], &[1.0; 2], &[0.0; 2], None),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        new(4, 2, &ok_codes, &[1.0; 2], &[0.0; 4], None),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        new(4, 4, &ok_codes, &[1.0; 2], &[0.0; 3], None),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        new(2, 4, &[0, 1, 2, 4, 0, 0, 0, 0], &[1.0; 2], &[0.0; 2], None),
        Err(KernelError::CodeOutOfRange { index: 3, .. })
    ));
    assert!(matches!(
        new(1, 4, &[0, 1, 2, 0, 0, 0, 0, 0], &[1.0; 2], &[0.0; 2], None),
        Err(KernelError::CodeOutOfRange { .. })
    ));
    assert!(matches!(
        new(4, 4, &ok_codes, &[f32::NAN, 1.0], &[0.0; 2], None),
        Err(KernelError::NonFinite { .. })
    ));
    assert!(matches!(
        new(4, 4, &ok_codes, &[1.0; 2], &[0.0, f32::INFINITY], None),
        Err(KernelError::NonFinite { .. })
    ));
    assert!(matches!(
        new(
            4,
            4,
            &ok_codes,
            &[1.0; 2],
            &[0.0; 2],
            Some(vec![0, 1, 1, 3])
        ),
        Err(KernelError::InvalidPermutation)
    ));
    assert!(matches!(
        new(
            4,
            4,
            &ok_codes,
            &[1.0; 2],
            &[0.0; 2],
            Some(vec![0, 1, 2, 4])
        ),
        Err(KernelError::InvalidPermutation)
    ));
    assert!(matches!(
        new(4, 4, &ok_codes, &[1.0; 2], &[0.0; 2], Some(vec![0, 1, 2])),
        Err(KernelError::ShapeMismatch { .. })
    ));
    let p = new(4, 4, &ok_codes, &[1.0; 2], &[0.0; 2], None).unwrap();
    let mut y = [0f32; 2];
    assert!(matches!(
        p.gemv(&[0.0; 3], &mut y),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        p.gemv(&[0.0; 4], &mut y[..1]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        p.gemm(&[0.0; 7], 2, &mut [0.0; 4]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        p.gemm(&[0.0; 8], 2, &mut [0.0; 3]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    // Degenerate but valid shapes.
    let e = PackedMatrix::new(4, 0, 5, 5, &[], &[], &[], None).unwrap();
    e.gemv(&[0.0; 5], &mut []).unwrap();
    let z = PackedMatrix::new(4, 2, 0, 1, &[], &[], &[], None).unwrap();
    let mut y2 = [1.0f32; 2];
    z.gemv(&[], &mut y2).unwrap();
    assert_eq!(y2, [0.0, 0.0]);
    z.gemm(&[], 3, &mut [1.0; 6]).unwrap();
}

#[test]
fn kernel_choice_parsing_and_clamping() {
    assert_eq!(KernelChoice::parse("AVX512"), Some(KernelChoice::Avx512));
    assert_eq!(KernelChoice::parse("scalar"), Some(KernelChoice::Scalar));
    assert_eq!(KernelChoice::parse("Neon"), Some(KernelChoice::Neon));
    assert_eq!(KernelChoice::parse("sse2"), None);
    for k in [
        KernelChoice::Scalar,
        KernelChoice::Avx2,
        KernelChoice::Avx512,
        KernelChoice::Neon,
    ] {
        assert!(k.clamp_to_supported().is_supported());
        assert_eq!(KernelChoice::parse(k.name()), Some(k));
    }
    // NEON is the AArch64 baseline; x86 kernels exist only on x86-64.
    assert_eq!(
        KernelChoice::Neon.is_supported(),
        cfg!(target_arch = "aarch64")
    );
    assert!(!cfg!(target_arch = "aarch64") || !KernelChoice::Avx2.is_supported());
    assert!(available_kernels().contains(&qwen3_quant_kernels::active_kernel()));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_shapes_match_reference(
        bits in prop::sample::select(vec![1u8, 2, 3, 4, 8]),
        rows in 1usize..9,
        cols in 1usize..400,
        gs_pick in 0usize..6,
        with_perm in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let gs = [16usize, 32, 64, 128, cols, 24][gs_pick];
        let mut rng = StdRng::seed_from_u64(seed);
        let c = make_case(&mut rng, bits, rows, cols, gs, with_perm);
        run_case(&mut rng, &c, &[1, 5]);
    }
}

/// SmoothQuant-style input scaling: every path computes `W · (x ⊙ scale)`, and `dequantize`
/// returns `W · diag(scale)`, with and without act-order.
#[test]
fn input_scale_applies_on_every_path() {
    let mut rng = StdRng::seed_from_u64(11);
    for (bits, rows, cols, perm) in [
        (4u8, 9usize, 300usize, true),
        (4, 70, 1024, false),
        (8, 5, 256, true),
        (3, 600, 512, false),
    ] {
        let c = make_case(&mut rng, bits, rows, cols, 128, perm);
        let scale: Vec<f32> = (0..cols).map(|_| rng.gen_range(0.25f32..4.0)).collect();
        let plain = build(&c);
        let plain_bytes = plain.storage_bytes();
        let p = plain.with_input_scale(scale.clone()).unwrap();
        assert_eq!(p.input_scale(), Some(&scale[..]));
        assert_eq!(p.storage_bytes(), plain_bytes + 4 * cols);
        let mut w = dense_reference(&c);
        w.chunks_exact_mut(cols)
            .for_each(|row| row.iter_mut().zip(&scale).for_each(|(v, s)| *v *= s));
        for (a, b) in p.dequantize().iter().zip(&w) {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "dequantize {a} vs {b}"
            );
        }
        // The prefill's whole-matrix dequantization: the same values (in original column
        // order, scaled) where the dense blocked kernel runs, nothing for a decode step or
        // over the size limit.
        if let Some(d) = p.dequantized_for_prefill(64, usize::MAX) {
            assert_eq!(d.len(), rows * cols);
            for (a, b) in d.iter().zip(&w) {
                assert!(
                    (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                    "prefill {a} vs {b}"
                );
            }
        }
        assert!(p.dequantized_for_prefill(1, usize::MAX).is_none());
        assert!(p.dequantized_for_prefill(64, 4 * rows * cols - 1).is_none());
        for m in [1usize, 3, 9] {
            let x: Vec<f32> = (0..m * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let mut y = vec![f32::NAN; m * rows];
            p.gemm(&x, m, &mut y).unwrap();
            check(
                bits,
                &x,
                m,
                &w,
                rows,
                cols,
                &y,
                &format!("input scale gemm bits {bits} m {m}"),
            );
            if m == 1 {
                let mut ye = vec![f32::NAN; rows];
                p.gemv_exact(&x, &mut ye).unwrap();
                check(bits, &x, 1, &w, rows, cols, &ye, "input scale gemv_exact");
                // The decode path (int8 activations where it applies) is within the activation
                // rounding bound: |Δ| ≤ √128/254 · ‖x ⊙ scale‖ · ‖scale_g · code‖ per row.
                let mut yq = vec![f32::NAN; rows];
                p.gemv(&x, &mut yq).unwrap();
                let xn = x
                    .iter()
                    .zip(&scale)
                    .map(|(a, s)| f64::from(a * s).powi(2))
                    .sum::<f64>()
                    .sqrt();
                let ng = cols.div_ceil(c.gs);
                for (r, (a, b)) in yq.iter().zip(&ye).enumerate() {
                    let cn = (0..cols)
                        .map(|j| {
                            f64::from(
                                c.scales[r * ng + j / c.gs] * f32::from(c.codes[r * cols + j]),
                            )
                            .powi(2)
                        })
                        .sum::<f64>()
                        .sqrt();
                    let bound = 128f64.sqrt() / 254.0 * xn * cn + 1e-4;
                    assert!(
                        f64::from(a - b).abs() <= bound,
                        "input scale gemv row {r}: {a} vs {b} (bound {bound})"
                    );
                }
            }
        }
    }
    let p = build(&make_case(&mut rng, 4, 2, 10, 5, false));
    assert!(matches!(
        p.clone().with_input_scale(vec![1.0; 9]),
        Err(KernelError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        p.with_input_scale(vec![f32::INFINITY; 10]),
        Err(KernelError::NonFinite { .. })
    ));
}
