//! An [`Observer`] that turns linear inputs into the statistics a method asked for.

use std::collections::HashMap;

use qwen3_quant_core::{ChannelStats, CrossCovariance, Hessian, LinearStats, StatsRequest};
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
        }
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
        let layer = self.layer;
        let st = self.sites.entry(site).or_default();
        st.cross
            .get_or_insert_with(|| CrossCovariance::new(cols))
            .accumulate(full, quantized, rows)
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
}
