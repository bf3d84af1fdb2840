//! Typed identifiers of the quantized linears of a Qwen3 decoder layer.

use std::fmt;

/// One of the seven quantized projections of a decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearKind {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl LinearKind {
    /// All kinds, in checkpoint order.
    pub const ALL: [LinearKind; 7] = [
        LinearKind::Q,
        LinearKind::K,
        LinearKind::V,
        LinearKind::O,
        LinearKind::Gate,
        LinearKind::Up,
        LinearKind::Down,
    ];

    /// Module name (`q_proj`, …, `down_proj`).
    pub fn proj_name(self) -> &'static str {
        match self {
            LinearKind::Q => "q_proj",
            LinearKind::K => "k_proj",
            LinearKind::V => "v_proj",
            LinearKind::O => "o_proj",
            LinearKind::Gate => "gate_proj",
            LinearKind::Up => "up_proj",
            LinearKind::Down => "down_proj",
        }
    }

    /// Parent module (`self_attn` or `mlp`).
    pub fn block_name(self) -> &'static str {
        match self {
            LinearKind::Q | LinearKind::K | LinearKind::V | LinearKind::O => "self_attn",
            _ => "mlp",
        }
    }
}

/// Identifies one linear: decoder layer, projection kind and (for MoE MLPs) the expert.
///
/// `Display` gives the module path below `model.`: `layers.3.self_attn.q_proj`,
/// `layers.3.mlp.up_proj`, `layers.3.mlp.experts.5.up_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinearId {
    /// Decoder layer index.
    pub layer: usize,
    /// Projection.
    pub kind: LinearKind,
    /// Expert index for MoE MLP projections.
    pub expert: Option<usize>,
}

impl LinearId {
    /// A dense (non-expert) linear.
    pub fn new(layer: usize, kind: LinearKind) -> Self {
        Self {
            layer,
            kind,
            expert: None,
        }
    }
}

impl fmt::Display for LinearId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "layers.{}.{}.", self.layer, self.kind.block_name())?;
        if let Some(e) = self.expert {
            write!(f, "experts.{e}.")?;
        }
        f.write_str(self.kind.proj_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn display() {
        assert_eq!(
            LinearId::new(3, LinearKind::Q).to_string(),
            "layers.3.self_attn.q_proj"
        );
        assert_eq!(
            LinearId {
                layer: 3,
                kind: LinearKind::Up,
                expert: Some(5)
            }
            .to_string(),
            "layers.3.mlp.experts.5.up_proj"
        );
        assert_eq!(
            LinearId::new(0, LinearKind::Down).to_string(),
            "layers.0.mlp.down_proj"
        );
    }
}
