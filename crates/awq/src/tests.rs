use super::*;
use qwen3_quant_core::{ChannelStats, LinearId, LinearKind, ScalePair, ScaleProducer, ScoredBlock};

#[test]
fn config_validation() {
    assert!(Awq::new(AwqConfig::default()).is_ok());
    let bad = AwqConfig {
        grid: 0,
        ..AwqConfig::default()
    };
    assert!(Awq::new(bad).is_err());
    let bad = AwqConfig {
        max_shrink: 1.0,
        ..AwqConfig::default()
    };
    assert!(Awq::new(bad).is_err());
    let bad = AwqConfig {
        min_scale: 0.0,
        ..AwqConfig::default()
    };
    assert!(Awq::new(bad).is_err());
}

#[test]
fn scales_follow_the_reference_formula() {
    let x = [0.5f32, 2.0, 8.0];
    let s = candidate_scales(&x, 0.0, 1e-4);
    assert_eq!(s, vec![1.0, 1.0, 1.0]);
    let r = 0.35f32;
    let raw: Vec<f32> = x.iter().map(|v| v.powf(r)).collect();
    let norm = (raw[2] * raw[0]).sqrt();
    let s = candidate_scales(&x, r, 1e-4);
    for (a, b) in s.iter().zip(&raw) {
        assert!((a - b / norm).abs() < 1e-6);
    }
    // Tiny channels are clamped at min_scale before the normalisation.
    let s = candidate_scales(&[1e-12, 1.0], 0.95, 1e-4);
    let norm = (1e-4f32 * 1.0).sqrt();
    assert!((s[0] - 1e-4 / norm).abs() < 1e-6 && (s[1] - 1.0 / norm).abs() < 1e-4);
    // Dead channels: neutral, excluded from the normalisation, never NaN.
    let s = candidate_scales(&[0.0, f32::NAN, 4.0], 0.5, 1e-4);
    assert_eq!(s, vec![1.0, 1.0, 1.0]);
    assert!(candidate_scales(&[0.0, 0.0], 0.5, 1e-4)
        .iter()
        .all(|v| *v == 1.0));
}

#[test]
fn clipping_never_increases_the_group_error_and_reduces_it_on_outliers() {
    // One outlier per group: clipping it lets the other 127 weights use a finer grid.
    let (out, inp, rows) = (4, 256, 64);
    let mut w: Vec<f32> = (0..out * inp)
        .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 1000.0)
        .collect();
    for r in 0..out {
        w[r * inp + 3] = 0.3;
        w[r * inp + 130] = -0.3;
    }
    let mut x: Vec<f32> = (0..rows * inp)
        .map(|i| ((i * 104729 % 97) as f32 - 48.0) / 50.0)
        .collect();
    // The outlier columns see small inputs, so their error matters little.
    for t in 0..rows {
        x[t * inp + 3] *= 0.01;
        x[t * inp + 130] *= 0.01;
    }
    let scheme = QuantScheme::new(
        Bits::B3,
        GroupSize::group(128).unwrap(),
        false,
        RangeConvention::Awq,
    )
    .unwrap();
    let cfg = AwqConfig::with_scheme(scheme);
    let r = clip_search(&w, out, inp, &x, rows, &cfg).unwrap();
    assert!(r.error.iter().zip(&r.baseline).all(|(e, b)| e <= b));
    let gain: f64 = r.baseline.iter().sum::<f64>() / r.error.iter().sum::<f64>();
    assert!(gain > 1.5, "clipping gained only {gain}");
    assert!(r.max_val.iter().zip(&r.org_max).all(|(m, o)| m < o));
    // Bounds stay on the grid 1 - i/20, i < 10.
    for (m, o) in r.max_val.iter().zip(&r.org_max) {
        let i = ((1.0 - m / o) * 20.0).round();
        assert!((0.0..10.0).contains(&i));
        assert!((m - o * (1.0 - i / 20.0)).abs() <= 1e-6 * o);
    }
    assert!(clip_search(&w, out, inp, &x[..10], rows, &cfg).is_err());
}

/// A one-linear layer: `y = x · Wᵀ` with a producer whose scale divides `x`.
struct MockCtx {
    w: Vec<f32>,
    out: usize,
    inp: usize,
    x: Vec<f32>,
    rows: usize,
    stats: ChannelStats,
    folded: Vec<Vec<f32>>,
    nan_losses: bool,
}

impl MockCtx {
    fn new(out: usize, inp: usize, rows: usize, outlier: usize) -> Self {
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 7919 % 211) as f32 - 105.0) / 300.0)
            .collect();
        let mut x: Vec<f32> = (0..rows * inp)
            .map(|i| ((i * 104729 % 97) as f32 - 48.0) / 50.0)
            .collect();
        for t in 0..rows {
            x[t * inp + outlier] *= 40.0; // one salient input channel
        }
        let mut stats = ChannelStats::new(inp);
        stats.accumulate(&x, rows).unwrap();
        MockCtx {
            w,
            out,
            inp,
            x,
            rows,
            stats,
            folded: Vec::new(),
            nan_losses: false,
        }
    }

    fn id() -> LinearId {
        LinearId::new(0, LinearKind::Down)
    }

    fn pair(&self) -> ScalePair {
        ScalePair {
            producer: ScaleProducer::Rows(LinearId::new(0, LinearKind::Up)),
            consumers: vec![Self::id()],
            block: ScoredBlock::Linear(Self::id()),
            channels: self.inp,
            column_map: None,
        }
    }

    fn output(&self, w: &[f32]) -> Vec<f32> {
        let mut y = vec![0.0f32; self.rows * self.out];
        for t in 0..self.rows {
            for r in 0..self.out {
                y[t * self.out + r] = (0..self.inp)
                    .map(|c| self.x[t * self.inp + c] * w[r * self.inp + c])
                    .sum();
            }
        }
        y
    }
}

impl LayerContext for MockCtx {
    fn layer(&self) -> usize {
        0
    }
    fn scale_pairs(&self) -> Vec<ScalePair> {
        vec![self.pair()]
    }
    fn linear_ids(&self) -> Vec<LinearId> {
        vec![Self::id()]
    }
    fn weight(&self, _: LinearId) -> Result<(Vec<f32>, usize, usize), MethodError> {
        Ok((self.w.clone(), self.out, self.inp))
    }
    fn pair_stats(&self, _: &ScalePair) -> Option<&ChannelStats> {
        Some(&self.stats)
    }
    fn input_stats(&self, _: LinearId) -> Option<&ChannelStats> {
        Some(&self.stats)
    }
    fn input_sample(&self, _: LinearId) -> Option<(&[f32], usize)> {
        Some((&self.x, self.rows))
    }
    fn tokens(&self, _: LinearId) -> usize {
        self.rows
    }
    fn block_losses_many(
        &mut self,
        requests: &[qwen3_quant_core::LossRequest<'_>],
    ) -> Result<Vec<Vec<f64>>, MethodError> {
        let org = self.output(&self.w);
        requests
            .iter()
            .map(|r| {
                (0..r.n)
                    .map(|i| {
                        let c = (r.candidate)(i)?;
                        let y = self.output(&c[0].1);
                        let mse = org
                            .iter()
                            .zip(&y)
                            .map(|(a, b)| ((a - b) as f64).powi(2))
                            .sum::<f64>()
                            / org.len() as f64;
                        Ok(if self.nan_losses { f64::NAN } else { mse })
                    })
                    .collect()
            })
            .collect()
    }
    fn fold_scale(&mut self, _: &ScalePair, s: &[f32]) -> Result<(), MethodError> {
        for row in self.w.chunks_exact_mut(self.inp) {
            row.iter_mut().zip(s).for_each(|(v, f)| *v *= f);
        }
        for row in self.x.chunks_exact_mut(self.inp) {
            row.iter_mut().zip(s).for_each(|(v, f)| *v /= f);
        }
        self.folded.push(s.to_vec());
        Ok(())
    }
    fn set_weight(&mut self, _: LinearId, w: Vec<f32>) -> Result<(), MethodError> {
        self.w = w;
        Ok(())
    }
}

fn w3() -> AwqConfig {
    let scheme = QuantScheme::new(
        Bits::B3,
        GroupSize::group(64).unwrap(),
        false,
        RangeConvention::Awq,
    )
    .unwrap();
    AwqConfig {
        clip: false,
        ..AwqConfig::with_scheme(scheme)
    }
}

#[test]
fn scale_search_protects_the_salient_channel_and_folds_exactly_once() {
    let mut ctx = MockCtx::new(8, 128, 64, 17);
    let awq = Awq::new(w3()).unwrap();
    let org = ctx.output(&ctx.w);
    let recs = awq.transform_layer(&mut ctx).unwrap();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.kind, "scale");
    assert!(r.fallback.is_none());
    let ratio = r.ratio.unwrap();
    assert!(ratio > 0.0, "the salient channel should get a larger scale");
    assert!(
        r.loss < 0.8 * r.baseline_loss,
        "{} vs {}",
        r.loss,
        r.baseline_loss
    );
    assert_eq!(ctx.folded.len(), 1);
    let s = &ctx.folded[0];
    assert!(
        s[17]
            > s.iter()
                .enumerate()
                .filter(|(i, _)| *i != 17)
                .map(|(_, v)| *v)
                .fold(0.0, f32::max)
    );
    // Folding is output-preserving in the mock too: x/s · (W·s)ᵀ.
    let after = ctx.output(&ctx.w);
    let d = org
        .iter()
        .zip(&after)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(d < 1e-4, "{d}");
}

#[test]
fn all_nan_losses_fall_back_to_a_unit_scale() {
    let mut ctx = MockCtx::new(8, 128, 16, 3);
    ctx.nan_losses = true;
    let recs = Awq::new(w3()).unwrap().transform_layer(&mut ctx).unwrap();
    assert!(recs[0].fallback.as_deref().unwrap().contains("finite"));
    assert_eq!(recs[0].ratio, Some(0.0));
    assert!(ctx.folded.is_empty());
}

#[test]
fn a_dead_input_channel_keeps_every_candidate_finite() {
    let mut ctx = MockCtx::new(8, 128, 32, 5);
    for t in 0..32 {
        ctx.x[t * 128 + 9] = 0.0;
    }
    ctx.stats = ChannelStats::new(128);
    ctx.stats.accumulate(&ctx.x, 32).unwrap();
    let awq = Awq::new(AwqConfig { clip: true, ..w3() }).unwrap();
    let recs = awq.transform_layer(&mut ctx).unwrap();
    assert!(recs
        .iter()
        .all(|r| r.loss.is_finite() && r.fallback.is_none()));
    let s = &ctx.folded[0];
    assert_eq!(s[9], 1.0);
    assert!(s.iter().all(|v| v.is_finite() && *v > 0.0));
    assert!(ctx.w.iter().all(|v| v.is_finite()));
}
