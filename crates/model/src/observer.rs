//! Observation of linear inputs during a forward pass (how calibration collects statistics).

use qwen3_quant_core::ScoredBlock;

/// A place in a decoder layer where the input of one or more linears is visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Site {
    /// `input_layernorm` output: the input of q_proj, k_proj and v_proj.
    AttnInput,
    /// The attention output before `o_proj`.
    OInput,
    /// `post_attention_layernorm` output: the input of gate_proj and up_proj (and the MoE router).
    MlpInput,
    /// `silu(gate) · up`: the input of down_proj.
    DownInput,
    /// The rows of `MlpInput` routed to one expert.
    ExpertInput(usize),
    /// The input of one expert's down_proj.
    ExpertDownInput(usize),
    /// Every token of `MlpInput`, as if routed to this expert: statistics only (the layer's
    /// output still follows the real routing). Reported only to observers that want it.
    ExpertInputAll(usize),
    /// The expert's down_proj input over every token (see [`Site::ExpertInputAll`]).
    ExpertDownInputAll(usize),
}

impl Site {
    /// Whether this is one of the all-token expert sites, which cost a forward of every
    /// expert over every token and are computed only for observers that ask for them.
    pub fn is_all_experts(self) -> bool {
        matches!(self, Site::ExpertInputAll(_) | Site::ExpertDownInputAll(_))
    }
}

/// Receives linear inputs as the model computes them.
pub trait Observer {
    /// Whether `site` of `layer` is of interest (lets the model skip copies).
    fn wants(&self, _layer: usize, _site: Site) -> bool {
        true
    }
    /// `x` is `[rows, cols]` row-major.
    fn observe(&mut self, layer: usize, site: Site, x: &[f32], rows: usize, cols: usize);
    /// The router's decisions of an MoE block of `layer`, reported before its expert sites:
    /// the rows of [`Site::ExpertInput`]`(e)` and [`Site::ExpertDownInput`]`(e)` are the
    /// tokens `routing.rows[e]`, in that order, and those of the all-token sites every token.
    fn observe_routing(&mut self, _layer: usize, _routing: &crate::mlp::Routing) {}
    /// Whether the whole blocks' outputs of `layer` are of interest (see
    /// [`Observer::observe_block_output`]); off by default, since the fused forward adds them
    /// into the residual stream without materialising them.
    fn wants_block_outputs(&self, _layer: usize) -> bool {
        false
    }
    /// The output `y` (`[rows, cols]`) of a whole block, before the residual add:
    /// [`ScoredBlock::Attention`] is `o_proj`'s output with its bias, [`ScoredBlock::FeedForward`]
    /// the MLP's or the MoE block's.
    fn observe_block_output(
        &mut self,
        _layer: usize,
        _block: ScoredBlock,
        _y: &[f32],
        _rows: usize,
        _cols: usize,
    ) {
    }
}

/// An observer that wants nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn wants(&self, _layer: usize, _site: Site) -> bool {
        false
    }
    fn observe(&mut self, _: usize, _: Site, _: &[f32], _: usize, _: usize) {}
}
