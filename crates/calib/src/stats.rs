//! An [`Observer`] that turns linear inputs into the statistics a method asked for.

use std::borrow::Cow;
use std::collections::HashMap;

use qwen3_quant_core::{ChannelStats, CrossCovariance, Hessian, LinearStats, StatsRequest};
use qwen3_quant_model::mlp::Routing;
use qwen3_quant_model::{Observer, Site};

use crate::error::{CalibError, Result};

/// Accumulates Hessians and/or per-channel statistics per input site of one layer.
#[derive(Debug)]
pub struct StatsCollector {
    layer: usize,
    request: StatsRequest,
    sites: HashMap<Site, LinearStats>,
    error: Option<CalibError>,
    all_experts: bool,
    routing_weighted: bool,
    routing: Option<Routing>,
}

impl StatsCollector {
    /// A collector for `layer` gathering what `request` asks for.
    pub fn new(layer: usize, request: StatsRequest) -> Self {
        StatsCollector {
            layer,
            request,
            sites: HashMap::new(),
            error: None,
            all_experts: false,
            routing_weighted: false,
            routing: None,
        }
    }

    /// Weights each token of an expert's statistics by its routing weight `w` (the rows scaled
    /// by `w`, so a Hessian sums `w² x xᵀ`): the expert's output reaches the layer's output
    /// multiplied by `w`, so so does its quantization error. The all-token sites use every
    /// token's soft weight ([`Routing::all_weights`]), which keeps tokens the router never
    /// sends to the expert near zero. Dense sites are unchanged; token counts stay counts.
    pub fn with_routing_weights(mut self, on: bool) -> Self {
        self.routing_weighted = on;
        self
    }

    /// The layer this collector gathers for.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Records the router's decisions for the expert sites that follow.
    pub fn set_routing(&mut self, routing: &Routing) {
        if self.routing_weighted {
            self.routing = Some(routing.clone());
        }
    }

    /// `x` with each row scaled by its routing weight where that applies (see
    /// [`Self::with_routing_weights`]).
    fn weighted<'x>(
        &self,
        site: Site,
        x: &'x [f32],
        rows: usize,
        cols: usize,
    ) -> Result<Cow<'x, [f32]>> {
        let (Site::ExpertInput(e)
        | Site::ExpertDownInput(e)
        | Site::ExpertInputAll(e)
        | Site::ExpertDownInputAll(e)) = site
        else {
            return Ok(Cow::Borrowed(x));
        };
        if !self.routing_weighted {
            return Ok(Cow::Borrowed(x));
        }
        let missing = || {
            CalibError::InvalidOptions(format!(
                "layer {} {site:?}: no routing weights for its {rows} rows",
                self.layer
            ))
        };
        let routing = self.routing.as_ref().ok_or_else(missing)?;
        let experts = routing.rows.len();
        let weights: Vec<f32> = if site.is_all_experts() {
            (0..rows)
                .map(|t| routing.all_weights.get(t * experts + e).copied())
                .collect::<Option<_>>()
                .filter(|_| e < experts)
                .ok_or_else(missing)?
        } else {
            routing
                .weights
                .get(e)
                .filter(|w| w.len() == rows)
                .cloned()
                .ok_or_else(missing)?
        };
        let mut out = x.to_vec();
        for (row, w) in out.chunks_exact_mut(cols.max(1)).zip(weights) {
            row.iter_mut().for_each(|v| *v *= w);
        }
        Ok(Cow::Owned(out))
    }

    /// Also collects the all-token expert sites ([`Site::ExpertInputAll`],
    /// [`Site::ExpertDownInputAll`]): every calibration token through every expert, for
    /// statistics only. Off by default, since it costs a forward of every expert on every token.
    pub fn with_all_experts(mut self, on: bool) -> Self {
        self.all_experts = on;
        self
    }

    /// Adds `rows` input rows of `site` (`x` is `[rows, cols]`).
    pub fn add(&mut self, site: Site, x: &[f32], rows: usize, cols: usize) -> Result<()> {
        let x = self.weighted(site, x, rows, cols)?;
        let x = &x[..];
        let st = self.sites.entry(site).or_default();
        st.tokens += rows;
        let ctx = |source| CalibError::Stats {
            site: format!("layer {} {site:?}", self.layer),
            source,
        };
        if self.request.hessian {
            st.hessian
                .get_or_insert_with(|| Hessian::new(cols))
                .accumulate(x, rows)
                .map_err(ctx)?;
        }
        if self.request.channel_stats {
            let ctx = |source| CalibError::Stats {
                site: format!("layer {} {site:?}", self.layer),
                source,
            };
            st.channels
                .get_or_insert_with(|| ChannelStats::new(cols))
                .accumulate(x, rows)
                .map_err(ctx)?;
        }
        Ok(())
    }

    /// [`Self::add`] for the quantized model's inputs `quantized`, plus `Σ (X − X̃)ᵀ X̃` with the
    /// full-precision model's inputs `full` at the same site and tokens (asymmetric calibration).
    pub fn add_pair(
        &mut self,
        site: Site,
        quantized: &[f32],
        full: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        self.add(site, quantized, rows, cols)?;
        let quantized = self.weighted(site, quantized, rows, cols)?;
        let full = self.weighted(site, full, rows, cols)?;
        let layer = self.layer;
        let st = self.sites.entry(site).or_default();
        st.cross
            .get_or_insert_with(|| CrossCovariance::new(cols))
            .accumulate(&full, &quantized, rows)
            .map_err(|source| CalibError::Stats {
                site: format!("layer {layer} {site:?}"),
                source,
            })
    }

    /// Finishes: every Hessian is normalised by the number of calibration sequences, as the
    /// reference does (H = 2/N_seq Σ XᵀX; `reference-methods.md` §2.2).
    pub fn finish(mut self, n_sequences: usize) -> Result<HashMap<Site, LinearStats>> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        for st in self.sites.values_mut() {
            if let Some(h) = st.hessian.as_mut() {
                h.n_sequences = n_sequences;
            }
        }
        Ok(self.sites)
    }
}

impl Observer for StatsCollector {
    fn wants(&self, layer: usize, site: Site) -> bool {
        layer == self.layer && self.error.is_none() && (self.all_experts || !site.is_all_experts())
    }

    fn observe(&mut self, _layer: usize, site: Site, x: &[f32], rows: usize, cols: usize) {
        if let Err(e) = self.add(site, x, rows, cols) {
            self.error = Some(e);
        }
    }

    fn observe_routing(&mut self, layer: usize, routing: &Routing) {
        if layer == self.layer {
            self.set_routing(routing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing() -> Routing {
        // 3 tokens, 2 experts: expert 1 serves tokens 0 and 2.
        Routing {
            rows: vec![vec![1], vec![0, 2]],
            weights: vec![vec![1.0], vec![0.25, 0.5]],
            all_weights: vec![0.75, 0.25, 1.0, 0.1, 0.5, 0.5],
        }
    }

    fn hessian(c: StatsCollector, site: Site) -> Vec<f32> {
        let mut stats = c.finish(1).unwrap();
        stats.remove(&site).unwrap().hessian.unwrap().data
    }

    fn gram(x: &[f32], cols: usize) -> Vec<f32> {
        let mut h = vec![0.0f32; cols * cols];
        for r in x.chunks(cols) {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += r[i] * r[j];
                }
            }
        }
        h
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1.0))
    }

    #[test]
    fn expert_rows_are_scaled_by_their_routing_weights() {
        let request = StatsRequest {
            hessian: true,
            channel_stats: false,
        };
        let x = [1.0f32, 2.0, -3.0, 0.5];
        let mut c = StatsCollector::new(0, request).with_routing_weights(true);
        c.observe_routing(0, &routing());
        c.observe(0, Site::ExpertInput(1), &x, 2, 2);
        let h = hessian(c, Site::ExpertInput(1));
        let expected = gram(&[0.25, 0.5, -1.5, 0.25], 2);
        assert!(close(&h, &expected), "{h:?} vs {expected:?}");

        // The all-token site: every token, by its soft weight for this expert.
        let all = [1.0f32, 1.0, 2.0, 2.0, 3.0, 3.0];
        let mut c = StatsCollector::new(0, request)
            .with_routing_weights(true)
            .with_all_experts(true);
        c.observe_routing(0, &routing());
        c.observe(0, Site::ExpertInputAll(0), &all, 3, 2);
        let h = hessian(c, Site::ExpertInputAll(0));
        let expected = gram(&[0.75, 0.75, 2.0, 2.0, 1.5, 1.5], 2);
        assert!(close(&h, &expected), "{h:?} vs {expected:?}");

        // Dense sites and unweighted collectors are untouched.
        let mut c = StatsCollector::new(0, request).with_routing_weights(true);
        c.observe_routing(0, &routing());
        c.observe(0, Site::MlpInput, &x, 2, 2);
        assert!(close(&hessian(c, Site::MlpInput), &gram(&x, 2)));
        let mut c = StatsCollector::new(0, request);
        c.observe_routing(0, &routing());
        c.observe(0, Site::ExpertInput(1), &x, 2, 2);
        assert!(close(&hessian(c, Site::ExpertInput(1)), &gram(&x, 2)));
    }

    #[test]
    fn expert_rows_without_routing_are_an_error() {
        let request = StatsRequest {
            hessian: true,
            channel_stats: false,
        };
        let mut c = StatsCollector::new(0, request).with_routing_weights(true);
        c.observe(0, Site::ExpertInput(1), &[1.0, 2.0], 1, 2);
        assert!(matches!(c.finish(1), Err(CalibError::InvalidOptions(_))));
        // A routing whose expert serves a different number of rows.
        let mut c = StatsCollector::new(0, request).with_routing_weights(true);
        c.observe_routing(0, &routing());
        c.observe(0, Site::ExpertInput(0), &[1.0, 2.0, 3.0, 4.0], 2, 2);
        assert!(c.finish(1).is_err());
    }
}
