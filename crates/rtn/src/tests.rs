use super::*;
use qwen3_quant_core::{LinearId, LinearKind};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn scheme(bits: u8, group: GroupSize, sym: bool, c: RangeConvention) -> QuantScheme {
    QuantScheme::new(Bits::new(bits).unwrap(), group, sym, c).unwrap()
}

fn rand_w(out: usize, inp: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..out * inp)
        .map(|_| rng.gen_range(-1.0f32..1.0) * rng.gen_range(0.1f32..1.0))
        .collect()
}

fn sq_err(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
}

#[test]
fn gptq_convention_hand_example() {
    let s = scheme(4, GroupSize::PerChannel, false, RangeConvention::Gptq);
    // row 0 mixed sign: range [-1, 2], scale 0.2, zero 5
    // row 1 all positive: range widened to [0, 7.5], scale 0.5, zero 0; .5 ties: 0.25/0.5 = 0.5 -> 0,
    //        0.75/0.5 = 1.5 -> 2, 1.25/0.5 = 2.5 -> 2
    // row 2 all zero: range [-1, 1]
    let w = [
        -1.0, 0.25, 2.0, 0.0, 7.5, 0.25, 0.75, 1.25, 0.0, 0.0, 0.0, 0.0,
    ];
    let q = quantize_weight(&w, 3, 4, &RtnConfig::new(s)).unwrap();
    assert_eq!(&q.codes()[..4], &[0, 6, 15, 5]);
    assert_eq!(&q.codes()[4..8], &[15, 0, 2, 2]);
    assert_eq!(q.scales()[..2], [3.0f32 / 15.0, 0.5]);
    assert_eq!(q.zeros()[..2], [5, 0]);
    assert_eq!(q.scales()[2], 2.0 / 15.0);
    let d = q.dequantize();
    assert_eq!(&d[4..8], &[7.5, 0.0, 1.0, 1.0]);
    assert_eq!(&d[8..], &[0.0; 4]);
    let s3 = 3.0f32 / 15.0;
    assert_eq!(&d[..4], &[s3 * -5.0, s3 * 1.0, s3 * 10.0, 0.0]);
}

#[test]
fn gptq_sym_all_positive_wastes_half_grid() {
    let s = scheme(4, GroupSize::PerChannel, true, RangeConvention::Gptq);
    let w = [0.0, 1.0, 2.0, 3.0];
    let q = quantize_weight(&w, 1, 4, &RtnConfig::new(s)).unwrap();
    assert_eq!(q.zeros(), &[8]);
    assert_eq!(q.scales(), &[3.0 / 15.0]);
    // 3.0 / 0.2 = 15 -> 15 + 8 clipped to 15 -> value 7 * 0.2
    assert_eq!(q.codes()[3], 15);
    assert_eq!(q.dequantize()[3], 7.0 * (3.0f32 / 15.0));
}

#[test]
fn awq_convention_hand_example() {
    let s = scheme(4, GroupSize::group(4).unwrap(), false, RangeConvention::Awq);
    // group 0 all positive [1, 8.5]: scale 0.5, zero clamp(-round(2), 0, 15) = 0;
    // ties: 1.25/0.5 = 2.5 -> 2, 1.75/0.5 = 3.5 -> 4.
    // group 1 all zero: scale 1e-5/15, zero 0, codes 0.
    let w = [1.0, 8.5, 1.25, 1.75, 0.0, 0.0, 0.0, 0.0];
    let q = quantize_weight(&w, 1, 8, &RtnConfig::new(s)).unwrap();
    assert_eq!(q.scales(), &[0.5, 1e-5 / 15.0]);
    assert_eq!(q.zeros(), &[0, 0]);
    assert_eq!(q.codes(), &[2, 15, 2, 4, 0, 0, 0, 0]);
    assert_eq!(q.dequantize(), vec![1.0, 7.5, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
    // mixed group [-1, 2]: zero = -round(-5) = 5
    let q = quantize_weight(&[-1.0, 2.0, 0.5, 0.0], 1, 4, &RtnConfig::new(s)).unwrap();
    assert_eq!(q.zeros(), &[5]);
}

#[test]
fn eight_bit_near_lossless() {
    let (o, i) = (16, 256);
    let w = rand_w(o, i, 1);
    for c in [RangeConvention::Gptq, RangeConvention::Awq] {
        let q = quantize_weight(
            &w,
            o,
            i,
            &RtnConfig::new(scheme(8, GroupSize::PerChannel, false, c)),
        )
        .unwrap();
        let d = q.dequantize();
        for r in 0..o {
            let row = &w[r * i..(r + 1) * i];
            let range = row.iter().cloned().fold(0.0f32, f32::max)
                - row.iter().cloned().fold(0.0f32, f32::min);
            let tol = range / 255.0 * 0.5 * 1.0001;
            for c in 0..i {
                assert!((row[c] - d[r * i + c]).abs() <= tol);
            }
        }
    }
}

#[test]
fn group_beats_channel_beats_tensor() {
    let (o, i) = (32, 512);
    let w = rand_w(o, i, 2);
    for c in [RangeConvention::Gptq, RangeConvention::Awq] {
        let err = |g| {
            let q = quantize_weight(&w, o, i, &RtnConfig::new(scheme(3, g, false, c))).unwrap();
            sq_err(&w, &q.dequantize())
        };
        let (et, ec, eg) = (
            err(GroupSize::PerTensor),
            err(GroupSize::PerChannel),
            err(GroupSize::group(64).unwrap()),
        );
        assert!(eg <= ec && ec <= et, "{c:?}: {eg} {ec} {et}");
    }
}

#[test]
fn per_tensor_shares_one_pair() {
    let w = rand_w(5, 12, 3);
    let q = quantize_weight(
        &w,
        5,
        12,
        &RtnConfig::new(scheme(4, GroupSize::PerTensor, true, RangeConvention::Gptq)),
    )
    .unwrap();
    assert!(q.scales().iter().all(|&s| s == q.scales()[0]));
    assert!(q.zeros().iter().all(|&z| z == 8));
    assert_eq!(q.group_size(), None);
}

#[test]
fn ragged_last_group() {
    let w = rand_w(3, 10, 4);
    let q = quantize_weight(
        &w,
        3,
        10,
        &RtnConfig::new(scheme(
            4,
            GroupSize::group(4).unwrap(),
            false,
            RangeConvention::Gptq,
        )),
    )
    .unwrap();
    assert_eq!(q.n_groups(), 3);
    assert_eq!(q.g_idx(), &[0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
    // the last group's params come from its 2 columns only
    let p = qwen3_quant_core::find_params(&w[8..10], &q_scheme_4());
    assert_eq!(q.scales()[2 * 3], p.scale);
}

fn q_scheme_4() -> QuantScheme {
    scheme(
        4,
        GroupSize::group(4).unwrap(),
        false,
        RangeConvention::Gptq,
    )
}

#[test]
fn all_bit_widths() {
    let w = rand_w(4, 32, 5);
    let mut prev = f64::INFINITY;
    for b in 1..=8u8 {
        let q = quantize_weight(
            &w,
            4,
            32,
            &RtnConfig::new(scheme(
                b,
                GroupSize::PerChannel,
                false,
                RangeConvention::Gptq,
            )),
        )
        .unwrap();
        let e = sq_err(&w, &q.dequantize());
        assert!(q.codes().iter().all(|&c| c <= Bits::new(b).unwrap().maxq()));
        assert!(e <= prev * 1.0001, "bits {b}: {e} > {prev}");
        prev = e;
    }
}

#[test]
fn bad_inputs_are_errors() {
    assert!(Bits::try_from(0).is_err());
    assert!(Bits::try_from(9).is_err());
    assert!(QuantScheme::new(Bits::B4, GroupSize::PerChannel, true, RangeConvention::Awq).is_err());
    let cfg = RtnConfig::default();
    assert!(matches!(
        quantize_weight(&[1.0; 5], 2, 3, &cfg),
        Err(MethodError::InvalidShape { .. })
    ));
    let e = Rtn::new(cfg)
        .unwrap()
        .quantize_linear(
            LinearInput {
                id: LinearId::new(7, LinearKind::O),
                weight: &[1.0, f32::INFINITY],
                out_features: 1,
                in_features: 2,
            },
            &LinearStats::default(),
        )
        .unwrap_err();
    assert!(matches!(
        e,
        MethodError::NonFinite {
            id: Some(_),
            index: 1,
            ..
        }
    ));
    assert!(e.to_string().contains("layers.7.self_attn.o_proj"));
    assert!(RtnConfig::default()
        .with_mse(MseSearch::default().with_grid(0))
        .validate()
        .is_err());
}

#[test]
fn mse_search_reduces_norm_error_and_clips_outliers() {
    let (o, i) = (8, 128);
    let mut w = rand_w(o, i, 6);
    for r in 0..o {
        w[r * i] = 8.0; // one outlier per row
    }
    let s = scheme(3, GroupSize::PerChannel, false, RangeConvention::Gptq);
    let plain = quantize_weight(&w, o, i, &RtnConfig::new(s)).unwrap();
    let mse = quantize_weight(&w, o, i, &RtnConfig::new(s).with_mse(MseSearch::default())).unwrap();
    let norm_err = |q: &QuantizedLinear| -> f64 {
        w.iter()
            .zip(q.dequantize())
            .map(|(a, b)| ((a - b).abs() as f64).powf(2.4))
            .sum()
    };
    assert!(norm_err(&mse) <= norm_err(&plain));
    assert!(mse.scales().iter().zip(plain.scales()).all(|(a, b)| a <= b));
    assert!(mse.scales().iter().zip(plain.scales()).any(|(a, b)| a < b));
    // exact reference loop on one row
    let row = &w[..i];
    let (xmin, xmax) = base_range(row, &s);
    let mut best = (f32::INFINITY, 0.0f32, 0.0f32);
    for k in 0..80 {
        let p = (1.0 - k as f64 / 100.0) as f32;
        let scale = (p * xmax - p * xmin) / 7.0;
        let zero = (-(p * xmin) / scale).round_ties_even();
        let err: f32 = row
            .iter()
            .map(|&x| {
                (scale * (((x / scale).round_ties_even() + zero).clamp(0.0, 7.0) - zero) - x)
                    .abs()
                    .powf(2.4)
            })
            .sum();
        if err < best.0 {
            best = (err, scale, zero);
        }
    }
    assert_eq!(mse.scales()[0], best.1);
    assert_eq!(mse.zeros()[0] as f32, best.2);
}

#[test]
fn quantizer_trait() {
    let rtn: Box<dyn Quantizer> = Box::new(Rtn::default());
    assert_eq!(rtn.name(), "rtn");
    assert_eq!(rtn.stats_required(), StatsRequest::default());
    assert_eq!(rtn.propagation(), Propagation::Quantized);
    assert!(!rtn.true_sequential());
    let w = rand_w(4, 16, 7);
    let out = rtn
        .quantize_linear(
            LinearInput {
                id: LinearId::new(0, LinearKind::Q),
                weight: &w,
                out_features: 4,
                in_features: 16,
            },
            &LinearStats::default(),
        )
        .unwrap();
    assert!((out.loss - sq_err(&w, &out.linear.dequantize())).abs() < 1e-9);
    assert_eq!(out.damp, 0.0);
}
