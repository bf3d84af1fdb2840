//! Unit tests of the method: the structural search against a literal transcription of the
//! reference on small random blocks, the binarization rules, the error feedback, the bits and
//! the error paths.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::quantile::quantile_linear;
use crate::residual::high_order_residual;
use crate::search::{saliency, search_block, search_value, BlockView};
use qwen3_quant_core::{BinaryTable, Hessian, LinearId, LinearKind};

fn random_matrix(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Vec<f32> {
    // Heavy-ish tails, like LLM weights: a normal times an occasional large factor.
    (0..rows * cols)
        .map(|_| {
            let g: f32 = (0..4).map(|_| rng.gen::<f32>() - 0.5).sum();
            g * if rng.gen::<f32>() < 0.05 { 4.0 } else { 1.0 }
        })
        .collect()
}

/// `Σ (x − HOR(x, mask, order))²` over the masked entries of every row (column order).
fn masked_error(x: &[f32], width: usize, mask: &[bool], order: usize) -> f64 {
    x.chunks(width)
        .zip(mask.chunks(width))
        .map(|(row, m)| {
            let vals: Vec<f32> = row
                .iter()
                .zip(m)
                .filter(|(_, &k)| k)
                .map(|(&v, _)| v)
                .collect();
            let rec = high_order_residual(&vals, order);
            vals.iter()
                .zip(&rec)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum::<f64>()
        })
        .sum()
}

/// The reference's `structural_searching` + `generate_structural_mask`, transcribed literally on
/// full `[rows, width]` masks: returns `(k, split, errors of every k, errors of every split)`.
fn brute_force(
    w: &[f32],
    width: usize,
    d: &[f32],
    cfg: &BillmConfig,
) -> (usize, f64, Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = w.len() / width;
    let x: Vec<f32> = (0..rows * width)
        .map(|i| search_value(w[i], d[i % width], cfg))
        .collect();
    let score: Vec<f64> = (0..width)
        .map(|c| {
            (0..rows)
                .map(|r| f64::from(saliency(w[r * width + c], d[c], cfg.salient_metric).abs()))
                .sum()
        })
        .collect();
    let mut top: Vec<usize> = (0..width).collect();
    top.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
    let up_lim = cfg.salient_column_limit.min(width);
    let mask3_of = |k: usize| -> Vec<bool> {
        (0..rows * width)
            .map(|i| top[..k].contains(&(i % width)))
            .collect()
    };
    let mut k_errors = Vec::new();
    let (mut best_k, mut best) = (0, f64::INFINITY);
    for k in 1..up_lim {
        let m3 = mask3_of(k);
        let not3: Vec<bool> = m3.iter().map(|&b| !b).collect();
        let e = masked_error(&x, width, &m3, 2) + masked_error(&x, width, &not3, 2);
        k_errors.push(e);
        if e < best {
            (best_k, best) = (k, e);
        }
    }
    let m3 = mask3_of(best_k);
    let mut flat: Vec<f32> = x
        .iter()
        .zip(&m3)
        .filter(|(_, &s)| !(s && cfg.quantiles_over_non_salient))
        .map(|(&v, &s)| if s { 0.0 } else { v.abs() })
        .collect();
    flat.sort_by(f32::total_cmp);
    let mut split_errors = Vec::new();
    let mut candidates = Vec::new();
    let (mut best_p, mut best) = (f64::INFINITY, f64::INFINITY);
    for q in cfg.split_quantiles() {
        let p = quantile_linear(&flat, q).unwrap();
        candidates.push(p);
        let m2: Vec<bool> = (0..rows * width)
            .map(|i| !m3[i] && f64::from(x[i].abs()) >= p)
            .collect();
        let m1: Vec<bool> = (0..rows * width).map(|i| !m3[i] && !m2[i]).collect();
        let e = masked_error(&x, width, &m1, 1) + masked_error(&x, width, &m2, 1);
        split_errors.push(e);
        if e < best {
            (best_p, best) = (p, e);
        }
    }
    (best_k, best_p, k_errors, split_errors, candidates)
}

#[test]
fn structural_search_matches_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let configs = [
        BillmConfig::default(),
        BillmConfig::all_fixes(),
        BillmConfig {
            quantiles_over_non_salient: true,
            ..BillmConfig::default()
        },
        BillmConfig::default().with_salient_metric(SalientMetric::Magnitude),
        BillmConfig {
            salient_column_limit: 7,
            split_quantile_points: 9,
            ..BillmConfig::default()
        },
    ];
    let mut checked = 0;
    for (t, cfg) in configs.iter().enumerate() {
        for &(rows, width) in &[(6usize, 64usize), (13, 40), (3, 9)] {
            let w = random_matrix(&mut rng, rows, width);
            let d: Vec<f32> = (0..width).map(|_| 0.2 + rng.gen::<f32>()).collect();
            let view = BlockView {
                w: &w,
                n: width,
                start: 0,
                width,
                d: &d,
            };
            let got = search_block(&view, cfg);
            let (k, p, ke, pe, cand) = brute_force(&w, width, &d, cfg);
            let got_k = got.salient.iter().filter(|&&s| s).count();
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
            assert!(got_k >= 1 && got_k < cfg.salient_column_limit.min(width));
            if got_k != k {
                // Only a float near-tie may differ.
                assert!(
                    close(ke[got_k - 1], ke[k - 1]),
                    "cfg {t} {rows}x{width}: k {got_k} vs {k}"
                );
                continue;
            }
            if got.split != p {
                let i = cand
                    .iter()
                    .position(|&c| c == got.split)
                    .expect("a candidate");
                let j = cand.iter().position(|&c| c == p).unwrap();
                assert!(
                    close(pe[i], pe[j]),
                    "cfg {t} {rows}x{width}: split {} vs {p}",
                    got.split
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 12, "{checked}");
}

/// A Hessian `XᵀX` of `tokens` correlated inputs (a few shared directions plus noise, with
/// uneven channel scales, like transformer activations), and the inputs.
fn correlated_inputs(rng: &mut ChaCha8Rng, tokens: usize, n: usize) -> (Vec<f32>, Hessian) {
    let dirs = random_matrix(rng, 4, n);
    let chan: Vec<f32> = (0..n)
        .map(|_| 0.3 + 2.0 * rng.gen::<f32>().powi(3))
        .collect();
    let mut x = vec![0f32; tokens * n];
    for t in 0..tokens {
        let c: Vec<f32> = (0..4).map(|_| rng.gen::<f32>() * 2.0 - 1.0).collect();
        for j in 0..n {
            let v: f32 = (0..4).map(|k| c[k] * dirs[k * n + j]).sum::<f32>()
                + 0.3 * (rng.gen::<f32>() - 0.5);
            x[t * n + j] = v * chan[j];
        }
    }
    let mut h = Hessian::new(n);
    h.accumulate(&x, tokens).unwrap();
    (x, h)
}

/// `‖X (W − Q)ᵀ‖²`: the layer-output error the method minimises.
fn output_error(x: &[f32], w: &[f32], q: &[f32], n: usize) -> f64 {
    let rows = w.len() / n;
    x.chunks(n)
        .map(|xt| {
            (0..rows)
                .map(|r| {
                    let e: f64 = (0..n)
                        .map(|j| f64::from(xt[j]) * f64::from(w[r * n + j] - q[r * n + j]))
                        .sum();
                    e * e
                })
                .sum::<f64>()
        })
        .sum()
}

#[test]
fn without_feedback_every_block_follows_the_binarization_rules() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (rows, n) = (24, 320);
    let w = random_matrix(&mut rng, rows, n);
    let (_, h) = correlated_inputs(&mut rng, 400, n);
    let cfg = BillmConfig {
        error_feedback: false,
        ..BillmConfig::default()
    };
    let out = binarize_weight(&w, rows, n, &h.scaled(), &cfg).unwrap();
    let b = &out.linear;
    let nb = n.div_ceil(128);
    assert_eq!((b.block_size(), b.tables().len()), (128, rows * nb));
    let q = b.dequantize();
    for blk in 0..nb {
        let (st, ed) = (blk * 128, ((blk + 1) * 128).min(n));
        let k = b.salient()[st..ed].iter().filter(|&&s| s).count();
        assert!((1..50).contains(&k), "block {blk}: {k} salient columns");
        for r in 0..rows {
            let cols = st..ed;
            let vals = |f: &dyn Fn(usize) -> bool| -> Vec<f32> {
                cols.clone()
                    .filter(|&c| f(c))
                    .map(|c| w[r * n + c])
                    .collect()
            };
            let sal = |c: usize| b.salient()[c];
            let conc = |c: usize| !sal(c) && b.bit1()[r * n + c] == 1;
            let sparse = crate::residual::mean_and_scale(&vals(&|c| !sal(c) && !conc(c)));
            let concentrated = crate::residual::mean_and_scale(&vals(&conc));
            let first = crate::residual::mean_and_scale(&vals(&sal));
            let b1 = |v: f32| first[0] + if v >= first[0] { first[1] } else { -first[1] };
            let resid: Vec<f32> = vals(&sal).iter().map(|&v| v - b1(v)).collect();
            let second = crate::residual::mean_and_scale(&resid);
            let params = qwen3_quant_core::BinaryParams {
                sparse,
                concentrated,
                salient_first: first,
                salient_second: second,
            };
            let table = params.quantized_table().unwrap();
            assert_eq!(b.tables()[r * nb + blk], table, "row {r} block {blk}");
            for c in cols.clone() {
                let v = w[r * n + c];
                let (sign, bit) = if sal(c) {
                    (v >= first[0], v - b1(v) >= second[0])
                } else if conc(c) {
                    (v >= concentrated[0], true)
                } else {
                    (v >= sparse[0], false)
                };
                assert_eq!(b.signs()[r * n + c], u8::from(sign));
                assert_eq!(b.bit1()[r * n + c], u8::from(bit));
                assert_eq!(
                    q[r * n + c],
                    table.values()[BinaryTable::index(sal(c), u8::from(bit), u8::from(sign))]
                );
            }
        }
        // One threshold on |w²/d²| splits every row's non-salient weights of the block.
        let d: Vec<f32> = {
            let mut hh = h.scaled();
            let dead = crate::hessian::fix_dead_columns(&mut hh, n).unwrap();
            assert!(!dead.iter().any(|&x| x));
            let f = crate::hessian::inverse_factor(&hh, n, 0.01, 0).unwrap();
            (0..n).map(|j| f.u[j * n + j]).collect()
        };
        let mag = |r: usize, c: usize| (w[r * n + c] * w[r * n + c] / (d[c] * d[c])).abs();
        let (mut max_sparse, mut min_conc) = (0f32, f32::INFINITY);
        for r in 0..rows {
            for c in st..ed {
                if b.salient()[c] {
                    continue;
                }
                if b.bit1()[r * n + c] == 1 {
                    min_conc = min_conc.min(mag(r, c));
                } else {
                    max_sparse = max_sparse.max(mag(r, c));
                }
            }
        }
        assert!(
            max_sparse < min_conc,
            "block {blk}: {max_sparse} vs {min_conc}"
        );
    }
    // The reference's bit figure: 1 + salient fraction of the last block (64 columns here).
    let k_last = b.salient()[256..].iter().filter(|&&s| s).count();
    assert!((b.reference_bits() - (1.0 + k_last as f64 / 64.0)).abs() < 1e-12);
    // Honest storage: 2 bits + 80 bits per (row, block) + the salient map, per weight.
    let honest =
        (2.0 * (rows * n) as f64 + 80.0 * (rows * nb) as f64 + n as f64) / (rows * n) as f64;
    assert!((b.bits_per_weight() - honest).abs() < 1e-12);
}

#[test]
fn error_feedback_lowers_the_output_error() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let (rows, n) = (32, 384);
    let w = random_matrix(&mut rng, rows, n);
    let (x, h) = correlated_inputs(&mut rng, 512, n);
    let run = |cfg: BillmConfig| {
        let out = binarize_weight(&w, rows, n, &h.scaled(), &cfg).unwrap();
        output_error(&x, &w, &out.linear.dequantize(), n)
    };
    let none = run(BillmConfig {
        error_feedback: false,
        ..BillmConfig::default()
    });
    let reference = run(BillmConfig::default());
    let intra = run(BillmConfig {
        intra_block_feedback: true,
        ..BillmConfig::default()
    });
    eprintln!("output error: no feedback {none:.4e}, between blocks {reference:.4e}, also inside {intra:.4e}");
    assert!(reference < 0.8 * none, "{reference} vs {none}");
    assert!(intra < reference, "{intra} vs {reference}");
}

#[test]
fn dead_columns_and_narrow_blocks() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let (rows, n) = (5, 70);
    let w = random_matrix(&mut rng, rows, n);
    let (_, h) = correlated_inputs(&mut rng, 100, n);
    let mut hs = h.scaled();
    // Column 3 never sees an input.
    for j in 0..n {
        hs[3 * n + j] = 0.0;
        hs[j * n + 3] = 0.0;
    }
    for cfg in [
        BillmConfig::default(),
        BillmConfig::all_fixes().with_block_size(64),
    ] {
        let out = binarize_weight(&w, rows, n, &hs, &cfg).unwrap();
        let q = out.linear.dequantize();
        assert!(q.iter().all(|v| v.is_finite()) && out.loss.is_finite());
        // The last block of 64-column blocks is 6 columns wide: at most 5 salient.
        let last = (n - 1) / cfg.block_size * cfg.block_size;
        let k = out.linear.salient()[last..].iter().filter(|&&s| s).count();
        assert!(k >= 1 && k < n - last);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let billm = Billm::new(BillmConfig::default()).unwrap();
    let id = LinearId::new(3, LinearKind::Down);
    let w = vec![0.1f32; 4 * 64];
    let input = LinearInput {
        id,
        weight: &w,
        out_features: 4,
        in_features: 64,
    };
    let e = billm
        .quantize_linear(input, &LinearStats::default())
        .unwrap_err();
    assert!(matches!(e, MethodError::MissingStatistics { .. }));
    assert!(e.to_string().contains("layers.3.mlp.down_proj"), "{e}");
    let stats = |h: Hessian| LinearStats {
        hessian: Some(h),
        channels: None,
        cross: None,
        tokens: 1,
    };
    let e = billm
        .quantize_linear(input, &stats(Hessian::new(32)))
        .unwrap_err();
    assert!(matches!(e, MethodError::InvalidShape { .. }));
    let mut hm = Hessian::new(64);
    (0..64).for_each(|i| hm.data[i * 64 + i] = 1.0);
    hm.data[70] = f32::NAN;
    let e = billm
        .quantize_linear(input, &stats(hm.clone()))
        .unwrap_err();
    assert!(
        matches!(
            e,
            MethodError::NonFinite {
                what: "hessian",
                ..
            }
        ),
        "{e}"
    );
    hm.data[70] = 0.0;
    let mut wn = w.clone();
    wn[9] = f32::INFINITY;
    let e = billm
        .quantize_linear(
            LinearInput {
                weight: &wn,
                ..input
            },
            &stats(hm.clone()),
        )
        .unwrap_err();
    assert!(matches!(e, MethodError::NonFinite { index: 9, .. }), "{e}");
    // An all-zero Hessian: every column dead, so H = I and the method still runs.
    let out = billm
        .quantize_linear(input, &stats(Hessian::new(64)))
        .unwrap();
    assert!(out.linear.dequantize().iter().all(|v| v.is_finite()));
    assert!(Billm::new(BillmConfig::default().with_block_size(100)).is_err());
    assert_eq!(billm.name(), "billm");
    assert!(billm.stats_required().hessian && !billm.true_sequential());
    assert_eq!(billm.propagation(), Propagation::Quantized);
}

#[test]
fn model_reference_bits_weight_by_size() {
    let mk = |rows: usize, cols: usize, salient_last: usize| -> QuantizedWeight {
        let nb = cols.div_ceil(128);
        let salient: Vec<bool> = (0..cols).map(|c| c >= cols - salient_last).collect();
        qwen3_quant_core::BinaryLinear::new(
            rows,
            cols,
            128,
            vec![0; rows * cols],
            vec![0; rows * cols],
            salient,
            vec![BinaryTable::default(); rows * nb],
        )
        .unwrap()
        .into()
    };
    let a = mk(2, 256, 16); // 1.125, 512 weights
    let b = mk(6, 128, 32); // 1.25, 768 weights
    let want = (1.125 * 512.0 + 1.25 * 768.0) / 1280.0;
    assert!((reference_bits([&a, &b]).unwrap() - want).abs() < 1e-12);
}
