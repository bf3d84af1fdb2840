use super::*;
use qwen3_quant_core::{
    fake_quantize, find_params, Bits, GroupSize, Hessian, LinearId, LinearKind, MseSearch,
    QuantScheme, RangeConvention,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect()
}

/// Correlated inputs: x = z · M with a random mixing matrix, plus per-channel scales.
fn correlated_x(tokens: usize, dim: usize, seed: u64) -> Vec<f32> {
    let z = rand_vec(tokens * dim, seed);
    let m = rand_vec(dim * dim, seed + 1);
    let scale: Vec<f32> = (0..dim)
        .map(|j| 0.2 + 2.0 * ((j * 7919) % 13) as f32 / 13.0)
        .collect();
    let mut x = vec![0f32; tokens * dim];
    for t in 0..tokens {
        for j in 0..dim {
            let mut s = 0f32;
            for k in 0..dim {
                s += z[t * dim + k] * (m[k * dim + j] * 0.3 + if k == j { 1.0 } else { 0.0 });
            }
            x[t * dim + j] = s * scale[j];
        }
    }
    x
}

fn hessian_of(x: &[f32], tokens: usize, dim: usize) -> Vec<f32> {
    let mut h = Hessian::new(dim);
    h.accumulate(x, tokens).unwrap();
    h.scaled()
}

fn identity(n: usize) -> Vec<f32> {
    let mut h = vec![0f32; n * n];
    (0..n).for_each(|i| h[i * n + i] = 1.0);
    h
}

fn cfg(bits: u8, gs: Option<usize>, sym: bool, act: bool) -> GptqConfig {
    GptqConfig {
        bits: Bits::new(bits).unwrap(),
        group_size: gs,
        sym,
        act_order: act,
        ..Default::default()
    }
}

/// RTN with GPTQ's quantizer over original column groups.
fn rtn(w: &[f32], out: usize, n: usize, bits: u8, gs: Option<usize>, sym: bool) -> Vec<f32> {
    let g = gs.map_or(GroupSize::PerChannel, |g| GroupSize::group(g).unwrap());
    let s = QuantScheme::new(Bits::new(bits).unwrap(), g, sym, RangeConvention::Gptq).unwrap();
    let gsz = gs.unwrap_or(n);
    let mut q = vec![0f32; out * n];
    for r in 0..out {
        for (gi, chunk) in w[r * n..(r + 1) * n].chunks(gsz).enumerate() {
            let p = find_params(chunk, &s);
            for (k, &x) in chunk.iter().enumerate() {
                q[r * n + gi * gsz + k] = fake_quantize(x, p, s.maxq());
            }
        }
    }
    q
}

/// ‖(W − Q) Xᵀ‖² over tokens.
fn output_err(w: &[f32], q: &[f32], out: usize, n: usize, x: &[f32], tokens: usize) -> f64 {
    let mut e = 0f64;
    for r in 0..out {
        for t in 0..tokens {
            let s: f64 = (0..n)
                .map(|j| ((w[r * n + j] - q[r * n + j]) as f64) * x[t * n + j] as f64)
                .sum();
            e += s * s;
        }
    }
    e
}

#[test]
fn identity_hessian_equals_rtn() {
    let (out, n) = (12, 96);
    let w = rand_vec(out * n, 1);
    let h = identity(n);
    for (bits, gs, sym) in [
        (4, None, false),
        (3, Some(32), false),
        (4, Some(32), true),
        (2, Some(40), false),
        (8, None, true),
    ] {
        for act in [false, true] {
            let o = quantize_weight(&w, out, n, &h, &cfg(bits, gs, sym, act)).unwrap();
            assert_eq!(
                o.fake_quant,
                rtn(&w, out, n, bits, gs, sym),
                "bits {bits} gs {gs:?} sym {sym} act {act}"
            );
            assert_eq!(o.linear.dequantize(), o.fake_quant);
        }
    }
    // A diagonal (uncorrelated) H with act-order: same as per-channel RTN.
    let mut h = vec![0f32; n * n];
    let d = rand_vec(n, 9);
    (0..n).for_each(|i| h[i * n + i] = d[i].abs() + 0.1);
    let o = quantize_weight(&w, out, n, &h, &cfg(4, None, false, true)).unwrap();
    assert_eq!(o.fake_quant, rtn(&w, out, n, 4, None, false));
}

#[test]
fn beats_rtn_on_correlated_inputs() {
    let (out, n, tokens) = (32, 64, 256);
    let w = rand_vec(out * n, 2);
    let x = correlated_x(tokens, n, 3);
    let h = hessian_of(&x, tokens, n);
    for (bits, gs, act, stat) in [
        (4, None, false, false),
        (3, None, true, false),
        (3, Some(16), true, false),
        (2, Some(32), false, false),
        (3, Some(16), true, true),
    ] {
        let c = GptqConfig {
            static_groups: stat,
            block_size: 16,
            ..cfg(bits, gs, false, act)
        };
        let o = quantize_weight(&w, out, n, &h, &c).unwrap();
        let eg = output_err(&w, &o.fake_quant, out, n, &x, tokens);
        let er = output_err(&w, &rtn(&w, out, n, bits, gs, false), out, n, &x, tokens);
        assert!(
            eg < er,
            "bits {bits} gs {gs:?} act {act} static {stat}: gptq {eg} rtn {er}"
        );
    }
}

/// Straightforward GPTQ: f64, no blocking, explicit Cholesky / inverse, same quantizer.
/// `block` only matters for group params: like the reference they are read from W as it was at
/// the start of the enclosing block (equal to the fully updated W when groups align with blocks).
/// `foem = Some(beta)` adds FOEM's first-order term as the paper states it, on every column:
/// the propagated error gives back `beta` of the column's drift from the original weight, and
/// the next column's drift shrinks by `beta`.
#[allow(clippy::too_many_arguments)]
fn slow_gptq(
    w: &[f32],
    out: usize,
    n: usize,
    h: &[f32],
    bits: u8,
    gs: Option<usize>,
    act: bool,
    block: usize,
    foem: Option<f64>,
) -> Vec<u8> {
    let s = QuantScheme::new(
        Bits::new(bits).unwrap(),
        GroupSize::PerChannel,
        false,
        RangeConvention::Gptq,
    )
    .unwrap();
    let maxq = s.maxq();
    let mut h: Vec<f64> = h.iter().map(|&v| v as f64).collect();
    let mut w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
    let chan: Vec<_> = (0..out)
        .map(|r| {
            find_params(
                &w[r * n..(r + 1) * n]
                    .iter()
                    .map(|&v| v as f32)
                    .collect::<Vec<_>>(),
                &s,
            )
        })
        .collect();
    for i in 0..n {
        if h[i * n + i] == 0.0 {
            h[i * n + i] = 1.0;
            (0..out).for_each(|r| w[r * n + i] = 0.0);
        }
    }
    let perm: Vec<usize> = if act {
        let diag: Vec<f32> = (0..n).map(|i| h[i * n + i] as f32).collect();
        act_order_perm(&diag)
            .into_iter()
            .map(|v| v as usize)
            .collect()
    } else {
        (0..n).collect()
    };
    let mut hp = vec![0f64; n * n];
    let mut wp = vec![0f64; out * n];
    for i in 0..n {
        for j in 0..n {
            hp[i * n + j] = h[perm[i] * n + perm[j]];
        }
        for r in 0..out {
            wp[r * n + i] = w[r * n + perm[i]];
        }
    }
    let damp = 0.01 * (0..n).map(|i| hp[i * n + i]).sum::<f64>() / n as f64;
    (0..n).for_each(|i| hp[i * n + i] += damp);
    let chol = |a: &[f64]| {
        let mut l = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                let s: f64 =
                    a[i * n + j] - (0..j).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>();
                l[i * n + j] = if i == j { s.sqrt() } else { s / l[j * n + j] };
            }
        }
        l
    };
    // inverse via L⁻¹
    let l = chol(&hp);
    let mut linv = vec![0f64; n * n];
    for j in 0..n {
        linv[j * n + j] = 1.0 / l[j * n + j];
        for i in j + 1..n {
            let s: f64 = (j..i).map(|k| l[i * n + k] * linv[k * n + j]).sum();
            linv[i * n + j] = -s / l[i * n + i];
        }
    }
    let mut hinv = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            hinv[i * n + j] = (0..n).map(|k| linv[k * n + i] * linv[k * n + j]).sum();
        }
    }
    let l2 = chol(&hinv);
    let u = |i: usize, j: usize| l2[j * n + i]; // upper factor
    let raw = wp.clone();
    let mut codes = vec![0u8; out * n];
    for r in 0..out {
        let mut p = chan[r];
        let mut snap = vec![0f64; n];
        for c in 0..n {
            if c % block == 0 {
                snap.copy_from_slice(&wp[r * n..(r + 1) * n]);
            }
            if let Some(g) = gs {
                if c % g == 0 {
                    let grp: Vec<f32> = snap[c..(c + g).min(n)].iter().map(|&v| v as f32).collect();
                    p = find_params(&grp, &s);
                }
            }
            let x = wp[r * n + c];
            let code = qwen3_quant_core::quantize_code(x as f32, p, maxq);
            let qv = qwen3_quant_core::dequantize_code(code, p) as f64;
            codes[r * n + perm[c]] = code;
            let beta = foem.unwrap_or(0.0);
            let e = ((x - qv) - beta * (x - raw[r * n + c])) / u(c, c);
            for k in c + 1..n {
                wp[r * n + k] -= e * u(c, k);
            }
            if c + 1 < n {
                let k = r * n + c + 1;
                wp[k] -= beta * (wp[k] - raw[k]);
            }
        }
    }
    codes
}

#[test]
fn matches_slow_reference() {
    let (out, n, tokens) = (24, 48, 128);
    let w = rand_vec(out * n, 4);
    let x = correlated_x(tokens, n, 5);
    let mut h = hessian_of(&x, tokens, n);
    // one dead column
    for k in 0..n {
        h[7 * n + k] = 0.0;
        h[k * n + 7] = 0.0;
    }
    for (bits, gs, act, block) in [
        (4, None, false, 16),
        (3, None, true, 16),
        (4, Some(16), true, 16),
        (3, Some(32), false, 16),
        (2, Some(16), true, 48),
        (3, Some(8), false, 20),
    ] {
        let c = GptqConfig {
            block_size: block,
            ..cfg(bits, gs, false, act)
        };
        let o = quantize_weight(&w, out, n, &h, &c).unwrap();
        let slow = slow_gptq(&w, out, n, &h, bits, gs, act, block, None);
        let same = o
            .linear
            .codes()
            .iter()
            .zip(&slow)
            .filter(|(a, b)| a == b)
            .count();
        eprintln!(
            "slow-reference match {bits} {gs:?} {act} {block}: {same}/{}",
            out * n
        );
        assert!(
            same as f64 >= 0.99 * (out * n) as f64,
            "{bits} {gs:?} {act}: {same}/{}",
            out * n
        );
    }
}

/// FOEM's first-order term, blocked and in parallel row chunks, against the unblocked
/// definition; and it changes codes, so that a no-op would fail.
#[test]
fn first_order_compensation_matches_slow_reference() {
    let (out, n, tokens) = (24, 48, 128);
    let w = rand_vec(out * n, 14);
    let x = correlated_x(tokens, n, 15);
    let h = hessian_of(&x, tokens, n);
    for (bits, gs, act, block, beta) in [
        (3, None, true, 16, 0.2),
        (4, Some(16), true, 16, 0.1),
        (2, Some(16), false, 48, 0.25),
        (3, Some(8), true, 20, 0.2),
    ] {
        let c = GptqConfig {
            block_size: block,
            first_order: Some(beta),
            ..cfg(bits, gs, false, act)
        };
        let o = quantize_weight(&w, out, n, &h, &c).unwrap();
        let slow = slow_gptq(&w, out, n, &h, bits, gs, act, block, Some(beta as f64));
        let plain = slow_gptq(&w, out, n, &h, bits, gs, act, block, None);
        let count = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x == y).count();
        let same = count(o.linear.codes(), &slow);
        let unchanged = count(&plain, &slow);
        eprintln!(
            "foem {bits} {gs:?} {act} {block} {beta}: {same}/{} match, {unchanged} as GPTQ",
            out * n
        );
        assert!(same as f64 >= 0.99 * (out * n) as f64, "{same}/{}", out * n);
        assert!(
            unchanged as f64 <= 0.97 * (out * n) as f64,
            "{unchanged}/{}",
            out * n
        );
    }
    let bad = GptqConfig::default().with_first_order(Some(1.0));
    assert!(matches!(bad.validate(), Err(MethodError::InvalidConfig(_))));
}

#[test]
fn dead_columns_and_zero_weights() {
    let (out, n) = (8, 32);
    let w = rand_vec(out * n, 6);
    let x = correlated_x(64, n, 7);
    let mut h = hessian_of(&x, 64, n);
    for &d in &[3usize, 20] {
        for k in 0..n {
            h[d * n + k] = 0.0;
            h[k * n + d] = 0.0;
        }
    }
    for gs in [None, Some(8)] {
        let o = quantize_weight(&w, out, n, &h, &cfg(4, gs, false, true)).unwrap();
        for r in 0..out {
            assert_eq!(o.fake_quant[r * n + 3], 0.0);
            assert_eq!(o.fake_quant[r * n + 20], 0.0);
        }
        assert_eq!(o.linear.dequantize(), o.fake_quant);
    }
    let z = vec![0f32; out * n];
    let o = quantize_weight(&z, out, n, &h, &cfg(3, Some(8), true, true)).unwrap();
    assert!(o.fake_quant.iter().all(|&v| v == 0.0));
    assert_eq!(o.loss, 0.0);
    // all-zero Hessian: every column dead, W becomes 0
    let o = quantize_weight(&w, out, n, &vec![0f32; n * n], &cfg(4, None, false, true)).unwrap();
    assert!(o.fake_quant.iter().all(|&v| v == 0.0));
}

#[test]
fn bad_inputs_are_typed_errors() {
    let (out, n) = (4, 8);
    let w = rand_vec(out * n, 8);
    let h = identity(n);
    let c = GptqConfig::default();
    let mut wn = w.clone();
    wn[5] = f32::NAN;
    assert!(matches!(
        quantize_weight(&wn, out, n, &h, &c),
        Err(MethodError::NonFinite {
            what: "weight",
            index: 5,
            ..
        })
    ));
    let mut hn = h.clone();
    hn[10] = f32::INFINITY;
    assert!(matches!(
        quantize_weight(&w, out, n, &hn, &c),
        Err(MethodError::NonFinite {
            what: "hessian",
            ..
        })
    ));
    let mut hneg = h.clone();
    hneg[2 * n + 2] = -1.0;
    assert!(matches!(
        quantize_weight(&w, out, n, &hneg, &c),
        Err(MethodError::HessianNotPositiveDefinite { column: 2, .. })
    ));
    assert!(matches!(
        quantize_weight(&w, out, n, &h[..10], &c),
        Err(MethodError::InvalidShape { .. })
    ));
    assert!(matches!(
        quantize_weight(
            &w,
            out,
            n,
            &h,
            &GptqConfig {
                bits: Bits::new(1).unwrap(),
                ..c
            }
        ),
        Err(MethodError::UnsupportedBits { bits: 1, .. })
    ));
    assert!(Gptq::new(GptqConfig { block_size: 0, ..c }).is_err());
    assert!(Gptq::new(GptqConfig {
        group_size: Some(0),
        ..c
    })
    .is_err());
    assert!(Gptq::new(GptqConfig {
        percdamp: f32::NAN,
        ..c
    })
    .is_err());
}

#[test]
fn damping_retries() {
    // Indefinite (eigenvalues -1 and 3) but with a positive diagonal: damp 0.01 → 0.1 → 1 fail,
    // 10 succeeds.
    let h = vec![1.0, 2.0, 2.0, 1.0];
    let w = vec![0.3, -0.7, 0.1, 0.9];
    let o = quantize_weight(&w, 2, 2, &h, &GptqConfig::default()).unwrap();
    assert!(o.damp > 9.0 && o.damp < 11.0, "{}", o.damp);
    let e = quantize_weight(
        &w,
        2,
        2,
        &h,
        &GptqConfig {
            max_damp_retries: 1,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            MethodError::HessianNotPositiveDefinite { column: 0 | 1, .. }
        ),
        "{e:?}"
    );
    let e = e.with_id(LinearId::new(4, LinearKind::Down));
    assert!(e.to_string().contains("layers.4.mlp.down_proj"), "{e}");
}

#[test]
fn act_order_layout_is_consistent() {
    let (out, n, tokens) = (16, 80, 160);
    let w = rand_vec(out * n, 10);
    let x = correlated_x(tokens, n, 11);
    let h = hessian_of(&x, tokens, n);
    for gs in [None, Some(16), Some(24), Some(128)] {
        for (act, stat, sym, block) in [
            (true, false, false, 32),
            (true, true, false, 32),
            (false, false, true, 7),
            (true, false, true, 128),
        ] {
            let c = GptqConfig {
                static_groups: stat,
                block_size: block,
                ..cfg(3, gs, sym, act)
            };
            let o = quantize_weight(&w, out, n, &h, &c).unwrap();
            let l = &o.linear;
            assert_eq!(
                l.dequantize(),
                o.fake_quant,
                "gs {gs:?} act {act} static {stat}"
            );
            let has_perm = act && gs.is_some() && !stat;
            assert_eq!(l.perm().is_some(), has_perm);
            if let (Some(p), Some(g)) = (l.perm(), gs) {
                // groups are runs of the processing order (desc diag)
                let diag: Vec<f32> = (0..n).map(|i| h[i * n + i]).collect();
                assert_eq!(p, &act_order_perm(&diag)[..]);
                for (j, &c) in p.iter().enumerate() {
                    assert_eq!(l.g_idx()[c as usize] as usize, j / g);
                }
            }
            assert!(o.loss.is_finite() && o.loss > 0.0);
            // The packed kernel layout reproduces the same weights (up to one f32 rounding).
            let packed = l.to_packed().unwrap().dequantize();
            for (a, b) in packed.iter().zip(&o.fake_quant) {
                assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }
}

#[test]
fn loss_formula() {
    // H = 2·I → normalised; damp = 0.02, d = 1/sqrt(2.02): loss = Σ (w−q)² · 2.02 / 2
    let (out, n) = (3, 10);
    let w = rand_vec(out * n, 12);
    let h: Vec<f32> = identity(n).iter().map(|v| v * 2.0).collect();
    let o = quantize_weight(&w, out, n, &h, &cfg(3, None, false, false)).unwrap();
    let se: f64 = w
        .iter()
        .zip(&o.fake_quant)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    assert!(
        (o.loss - se * 2.02 / 2.0).abs() < 1e-5 * se.max(1e-9),
        "{} vs {}",
        o.loss,
        se * 1.01
    );
    assert!((o.damp - 0.02).abs() < 1e-9);
}

#[test]
fn quantizer_trait() {
    let g: Box<dyn Quantizer> = Box::new(Gptq::default());
    assert_eq!(g.name(), "gptq");
    assert!(g.stats_required().hessian && !g.stats_required().channel_stats);
    assert_eq!(g.propagation(), Propagation::Quantized);
    assert!(g.true_sequential());
    let (out, n) = (4, 16);
    let w = rand_vec(out * n, 13);
    let id = LinearId {
        layer: 1,
        kind: LinearKind::Up,
        expert: Some(2),
    };
    let input = LinearInput {
        id,
        weight: &w,
        out_features: out,
        in_features: n,
    };
    let e = g
        .quantize_linear(input, &LinearStats::default())
        .unwrap_err();
    assert!(matches!(
        e,
        MethodError::MissingStatistics { id: Some(_), .. }
    ));
    assert!(e.to_string().contains("layers.1.mlp.experts.2.up_proj"));
    let x = correlated_x(32, n, 14);
    let mut h = Hessian::new(n);
    h.accumulate(&x, 32).unwrap();
    let st = LinearStats {
        hessian: Some(h.clone()),
        channels: None,
        cross: None,
        tokens: 32,
    };
    let o = g.quantize_linear(input, &st).unwrap();
    let direct = quantize_weight(&w, out, n, &h.scaled(), &GptqConfig::default()).unwrap();
    assert_eq!(o.linear, direct.linear.into());
    let bad = LinearStats {
        hessian: Some(Hessian::new(n + 1)),
        channels: None,
        cross: None,
        tokens: 0,
    };
    assert!(matches!(
        g.quantize_linear(input, &bad),
        Err(MethodError::InvalidShape { .. })
    ));
}

/// The range search: static-group params (computed on the original weights) never have a larger
/// 2.4-norm rounding error than min/max and are smaller on some groups; a one-step search is
/// plain min/max; a bad search is a typed error. (Whether a smaller rounding error also lowers
/// GPTQ's output error depends on the weights: GPTQ compensates rounding error but not a clipped
/// outlier, so that is measured on the real model, not asserted here.)
#[test]
fn mse_range_search() {
    let (out, n, tokens, gs) = (24, 64, 256, 16);
    let mut w = rand_vec(out * n, 71);
    for r in 0..out {
        w[r * n + (r * 5) % n] *= 3.0;
    }
    let x = correlated_x(tokens, n, 72);
    let h = hessian_of(&x, tokens, n);
    let base = GptqConfig {
        static_groups: true,
        ..cfg(3, Some(gs), false, true)
    };
    let plain = quantize_weight(&w, out, n, &h, &base).unwrap();
    let mse = quantize_weight(&w, out, n, &h, &base.with_mse(Some(MseSearch::default()))).unwrap();
    let group_err = |o: &GptqOutput, r: usize, g: usize| -> f64 {
        let p = qwen3_quant_core::QuantParams {
            scale: o.linear.scales()[g * out + r],
            zero: o.linear.zeros()[g * out + r] as f32,
        };
        w[r * n + g * gs..r * n + (g + 1) * gs]
            .iter()
            .map(|&v| ((v - fake_quantize(v, p, 7)).abs() as f64).powf(2.4))
            .sum()
    };
    let mut better = 0;
    for r in 0..out {
        for g in 0..n / gs {
            let (a, b) = (group_err(&mse, r, g), group_err(&plain, r, g));
            assert!(a <= b * (1.0 + 1e-6), "row {r} group {g}: {a} > {b}");
            better += usize::from(a < b * 0.999);
        }
    }
    assert!(better > 0, "some group's range shrinks");
    // One grid step: only p = 1, i.e. min/max.
    let one = MseSearch::default()
        .with_grid(100)
        .with_max_shrink(0.01)
        .with_norm(2.4);
    let same = quantize_weight(&w, out, n, &h, &base.with_mse(Some(one))).unwrap();
    assert_eq!(same.linear.codes(), plain.linear.codes());
    // Dynamic groups with act-order and the weighted search run; their effect is measured on the
    // model (docs/beyond-the-study.md).
    let dynamic = cfg(3, Some(gs), false, true);
    for weighted in [false, true] {
        let c = GptqConfig {
            mse_hessian_weighted: weighted,
            ..dynamic.with_mse(Some(MseSearch::default()))
        };
        let o = quantize_weight(&w, out, n, &h, &c).unwrap();
        let e = output_err(&w, &o.fake_quant, out, n, &x, tokens);
        assert!(e.is_finite() && e > 0.0);
    }
    let bad = GptqConfig {
        mse: Some(MseSearch::default().with_grid(0)),
        ..dynamic
    };
    assert!(matches!(
        quantize_weight(&w, out, n, &h, &bad),
        Err(MethodError::InvalidConfig(_))
    ));
}

/// Coordinate-descent refinement keeps GPTQ's grid, never raises the damped layer loss, and
/// lowers the output error on correlated inputs in every layout (channel, dynamic and static
/// groups, act-order).
#[test]
fn refinement_lowers_the_layer_loss_on_the_same_grid() {
    let (out, n, tokens) = (48, 96, 384);
    let w = rand_vec(out * n, 11);
    let x = correlated_x(tokens, n, 12);
    let h = hessian_of(&x, tokens, n);
    let damped_loss = |q: &[f32], damp: f64| {
        let mut l = 0f64;
        for r in 0..out {
            let e: Vec<f64> = (0..n)
                .map(|j| (q[r * n + j] - w[r * n + j]) as f64)
                .collect();
            for i in 0..n {
                let hi: f64 = (0..n).map(|j| h[i * n + j] as f64 * e[j]).sum();
                l += e[i] * (hi + damp * e[i]);
            }
        }
        l
    };
    for (bits, gs, act, stat) in [
        (3, None, true, false),
        (3, Some(32), true, false),
        (2, Some(32), false, false),
        (3, Some(32), true, true),
    ] {
        let base = cfg(bits, gs, false, act)
            .with_static_groups(stat)
            .with_block_size(32);
        let plain = quantize_weight(&w, out, n, &h, &base).unwrap();
        let refined = quantize_weight(&w, out, n, &h, &base.with_refine_passes(4)).unwrap();
        let what = format!("bits {bits} gs {gs:?} act {act} static {stat}");
        // Same grid, codes moved, and the stored weight is what the codes say.
        assert_eq!(plain.linear.scales(), refined.linear.scales(), "{what}");
        assert_eq!(plain.linear.zeros(), refined.linear.zeros(), "{what}");
        assert_eq!(plain.linear.g_idx(), refined.linear.g_idx(), "{what}");
        let moved = plain
            .linear
            .codes()
            .iter()
            .zip(refined.linear.codes())
            .filter(|(a, b)| a != b)
            .count();
        assert!(moved > 0, "{what}: nothing moved");
        assert_eq!(refined.fake_quant, refined.linear.dequantize(), "{what}");
        let (lp, lr) = (
            damped_loss(&plain.fake_quant, plain.damp),
            damped_loss(&refined.fake_quant, refined.damp),
        );
        assert!(lr < lp, "{what}: refined {lr} vs plain {lp}");
        let (ep, er) = (
            output_err(&w, &plain.fake_quant, out, n, &x, tokens),
            output_err(&w, &refined.fake_quant, out, n, &x, tokens),
        );
        assert!(er < ep, "{what}: output error refined {er} vs plain {ep}");
        // Refitting the scales to the codes lowers the same loss again; zeros and layout stay.
        let refit = quantize_weight(
            &w,
            out,
            n,
            &h,
            &base.with_refine_passes(4).with_refit_scales(2),
        )
        .unwrap();
        assert_ne!(refit.linear.scales(), plain.linear.scales(), "{what}");
        assert_eq!(refit.linear.zeros(), plain.linear.zeros(), "{what}");
        assert_eq!(refit.linear.g_idx(), plain.linear.g_idx(), "{what}");
        assert_eq!(refit.fake_quant, refit.linear.dequantize(), "{what}");
        let ls = damped_loss(&refit.fake_quant, refit.damp);
        assert!(ls < 0.999 * lr, "{what}: refit {ls} vs refined {lr}");
    }
    assert!(cfg(3, None, false, true)
        .with_refit_scales(1)
        .validate()
        .is_err());
    let too_many = cfg(3, None, false, true).with_refine_passes(MAX_REFINE_PASSES + 1);
    assert!(too_many.validate().is_err());
}

/// Handing the Hessian over (packed to its lower triangle before the factorisation) gives the
/// borrowed path's result bit for bit: plain, act-order with and without static groups, per
/// channel, with a dead column, through the damping retries, and through the trait (whose owned
/// path falls back to borrowing where the refinement reads the whole matrix).
#[test]
fn an_owned_hessian_gives_the_same_result() {
    let (out, n, tokens) = (24, 96, 200);
    let w = rand_vec(out * n, 21);
    let mut x = correlated_x(tokens, n, 22);
    for t in 0..tokens {
        x[t * n + 5] = 0.0; // a dead column
    }
    let h = hessian_of(&x, tokens, n);
    let static_act = GptqConfig {
        static_groups: true,
        ..cfg(3, Some(32), false, true)
    };
    let configs = [
        cfg(4, Some(32), false, false),
        cfg(3, Some(32), false, true),
        static_act,
        cfg(2, None, true, true),
    ];
    for (k, c) in configs.iter().enumerate() {
        let a = quantize_weight_scaled(&w, out, n, &h, 0.5, c).unwrap();
        let b = quantize_weight_scaled_owned(&w, out, n, h.clone(), 0.5, c).unwrap();
        assert_eq!(a.linear, b.linear, "config {k}");
        assert_eq!(a.fake_quant, b.fake_quant, "config {k}");
        assert_eq!((a.loss, a.damp), (b.loss, b.damp), "config {k}");
    }
    // Indefinite: the retries factor the packed matrix again.
    let hi = vec![1.0, 2.0, 2.0, 1.0];
    let wi = vec![0.3, -0.7, 0.1, 0.9];
    let c = GptqConfig::default();
    let a = quantize_weight(&wi, 2, 2, &hi, &c).unwrap();
    let b = quantize_weight_scaled_owned(&wi, 2, 2, hi.clone(), 1.0, &c).unwrap();
    assert_eq!((a.linear, a.damp), (b.linear, b.damp));
    // Bad input is the same typed error.
    let mut nan = h.clone();
    nan[7] = f32::NAN;
    assert!(matches!(
        quantize_weight_scaled_owned(&w, out, n, nan, 1.0, &configs[0]),
        Err(MethodError::NonFinite {
            what: "hessian",
            index: 7,
            ..
        })
    ));
    // The trait, with and without the refinement.
    let mut hs = Hessian::new(n);
    hs.accumulate(&x, tokens).unwrap();
    let id = LinearId::new(0, LinearKind::Down);
    for refine in [0, 2] {
        let g = Gptq::new(cfg(3, Some(32), false, true).with_refine_passes(refine)).unwrap();
        let st = LinearStats {
            hessian: Some(hs.clone()),
            tokens: 64 * n,
            ..Default::default()
        };
        let input = LinearInput {
            id,
            weight: &w,
            out_features: out,
            in_features: n,
        };
        let a = g.quantize_linear(input, &st).unwrap();
        let b = g.quantize_linear_owned(input, st).unwrap();
        assert_eq!(a, b, "refine {refine}");
    }
}
