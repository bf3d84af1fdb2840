//! Asymmetric calibration of a layer calibrated in one forward pass (an MoE layer): each
//! linear input of the quantized model is paired with the full-precision model's input at the
//! same tokens.
//!
//! The full-precision layer runs first on the full-precision stream and [`SiteRecorder`] keeps
//! its dense-site inputs; then the quantized stream's forward reports to [`PairedCollector`].
//! An expert's pair is taken at the tokens the *quantized* stream routes to it, since those are
//! the tokens whose outputs the expert's weights decide in the quantized model.

use std::borrow::Cow;
use std::collections::HashMap;

use qwen3_quant_model::mlp::{gather_rows, MoeBlock, Routing};
use qwen3_quant_model::{DecoderLayer, FeedForward, Observer, Site};

use crate::error::{CalibError, Result};
use crate::stats::StatsCollector;

/// Keeps the inputs of the sites every token passes through (attention, `o_proj`, the MLP
/// and a dense MLP's `down_proj`) from one forward of one chunk.
#[derive(Debug, Default)]
pub(crate) struct SiteRecorder {
    sites: HashMap<Site, Vec<f32>>,
}

impl SiteRecorder {
    /// A recorder holding `x` as the input of `site` (a site computed outside a forward).
    pub(crate) fn holding(site: Site, x: Vec<f32>) -> Self {
        SiteRecorder {
            sites: HashMap::from([(site, x)]),
        }
    }
}

impl Observer for SiteRecorder {
    fn wants(&self, _layer: usize, site: Site) -> bool {
        matches!(
            site,
            Site::AttnInput | Site::OInput | Site::MlpInput | Site::DownInput
        )
    }

    fn observe(&mut self, _layer: usize, site: Site, x: &[f32], _rows: usize, _cols: usize) {
        self.sites.insert(site, x.to_vec());
    }
}

/// Adds each observed input of the quantized stream to a [`StatsCollector`] with
/// [`StatsCollector::add_pair`], the full-precision counterpart taken from a [`SiteRecorder`]
/// of the same chunk (gathered and run through the expert's gate/up for the expert sites).
pub(crate) struct PairedCollector<'a> {
    stats: &'a mut StatsCollector,
    full: &'a SiteRecorder,
    moe: Option<&'a MoeBlock>,
    routing: Option<Routing>,
    error: Option<CalibError>,
}

impl<'a> PairedCollector<'a> {
    /// `layer` is the full-precision layer (its router and experts give the expert pairs).
    pub(crate) fn new(
        stats: &'a mut StatsCollector,
        full: &'a SiteRecorder,
        layer: &'a DecoderLayer,
    ) -> Self {
        let moe = match &layer.ffn {
            FeedForward::Moe(m) => Some(m),
            FeedForward::Dense(_) => None,
        };
        PairedCollector {
            stats,
            full,
            moe,
            routing: None,
            error: None,
        }
    }

    /// The first error of the pass, if any.
    pub(crate) fn finish(self) -> Result<()> {
        self.error.map_or(Ok(()), Err)
    }

    fn recorded(&self, site: Site) -> Result<&'a [f32]> {
        let full: &'a SiteRecorder = self.full;
        full.sites.get(&site).map(Vec::as_slice).ok_or_else(|| {
            CalibError::InvalidOptions(format!(
                "the full-precision layer reported no input at {site:?}"
            ))
        })
    }

    /// The quantized stream's routing of the expert sites that follow, from its own router
    /// (which a router refit may have changed), without collecting the MLP input's statistics
    /// (what observing [`Site::MlpInput`] also does).
    pub(crate) fn set_routing(&mut self, routing: Routing) {
        self.routing = Some(routing);
    }

    fn pair(&mut self, site: Site, x: &[f32], rows: usize, cols: usize) -> Result<()> {
        if let (Site::MlpInput, Some(moe)) = (site, self.moe) {
            self.routing = Some(moe.route(x, rows)?);
        }
        let full: Cow<'_, [f32]> = match (site, self.moe) {
            (Site::ExpertInput(e) | Site::ExpertDownInput(e), Some(moe)) => {
                let routed = self
                    .routing
                    .as_ref()
                    .and_then(|r| r.rows.get(e))
                    .ok_or_else(|| {
                        CalibError::InvalidOptions(format!("expert {e} seen before its routing"))
                    })?;
                let mlp_in = self.recorded(Site::MlpInput)?;
                let xe = gather_rows(mlp_in, moe.router.in_features(), routed);
                if matches!(site, Site::ExpertInput(_)) {
                    Cow::Owned(xe)
                } else {
                    Cow::Owned(moe.experts[e].activation(&xe, routed.len())?)
                }
            }
            (Site::ExpertInputAll(_), Some(_)) => Cow::Borrowed(self.recorded(Site::MlpInput)?),
            (Site::ExpertDownInputAll(e), Some(moe)) => {
                Cow::Owned(moe.experts[e].activation(self.recorded(Site::MlpInput)?, rows)?)
            }
            (s, _) => Cow::Borrowed(self.recorded(s)?),
        };
        self.stats.add_pair(site, x, &full, rows, cols)
    }
}

impl Observer for PairedCollector<'_> {
    fn wants(&self, layer: usize, site: Site) -> bool {
        self.error.is_none() && self.stats.wants(layer, site)
    }

    fn observe(&mut self, _layer: usize, site: Site, x: &[f32], rows: usize, cols: usize) {
        if let Err(e) = self.pair(site, x, rows, cols) {
            self.error = Some(e);
        }
    }

    fn observe_routing(&mut self, layer: usize, routing: &Routing) {
        self.stats.observe_routing(layer, routing);
    }
}

/// Passes on to `inner` only the sites `keep` accepts (and every routing): one stage of a
/// layer's calibration collects some of the sites a forward reports.
pub(crate) struct OnlySites<'a> {
    pub(crate) inner: &'a mut dyn Observer,
    pub(crate) keep: fn(Site) -> bool,
}

impl Observer for OnlySites<'_> {
    fn wants(&self, layer: usize, site: Site) -> bool {
        (self.keep)(site) && self.inner.wants(layer, site)
    }

    fn observe(&mut self, layer: usize, site: Site, x: &[f32], rows: usize, cols: usize) {
        self.inner.observe(layer, site, x, rows, cols);
    }

    fn observe_routing(&mut self, layer: usize, routing: &Routing) {
        self.inner.observe_routing(layer, routing);
    }
}
