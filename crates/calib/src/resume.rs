//! Resumable runs: what the driver hands to a [`LayerStore`] after each finished decoder layer,
//! and what it takes back to continue an interrupted run after its last finished layer.
//!
//! The driver knows neither files nor formats: a store decides how a layer is kept (the formats
//! crate's `ResumeDir` keeps it as native safetensors plus JSON, written atomically and synced).
//! What the driver needs to continue is exactly what it would hold in memory after layer `k`: the
//! finished layers, their log entries and the next layer's calibration inputs (with asymmetric
//! calibration, the full-precision model's too). Given those, the
//! rest of the run performs the same arithmetic as an uninterrupted one, so its results are
//! bit-identical.

use std::io::{Read, Write};
use std::path::Path;

use qwen3_quant_core::{LinearId, QuantizedWeight};
use qwen3_quant_model::DecoderLayer;

use crate::activations::ActivationStore;
use crate::driver::{LinearRecord, TransformLog};
use crate::error::{CalibError, Result};

/// One finished layer, as the driver hands it to [`LayerStore::save`].
#[derive(Debug)]
pub struct FinishedLayer<'a> {
    /// The layer as it now is in the model: transformed norms, quantized (or packed) linears.
    pub layer: &'a DecoderLayer,
    /// The layer's quantized linears, in processing order.
    pub quantized: &'a [(LinearId, QuantizedWeight)],
    /// The layer's lines of the per-linear log.
    pub records: &'a [LinearRecord],
    /// The layer's lines of the transforms' log.
    pub transforms: &'a [TransformLog],
    /// Calibration tokens routed to each expert (MoE layers).
    pub expert_tokens: Option<&'a [usize]>,
    /// The next layer's calibration inputs (`None` for runs without calibration data).
    pub activations: Option<&'a ActivationStore>,
    /// The next layer's inputs in the full-precision model, for runs with full-precision
    /// targets (asymmetric calibration); `None` otherwise.
    pub fp_activations: Option<&'a ActivationStore>,
}

/// How [`LayerStore::load`] gives finished layers back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Restore {
    /// Layers with dequantized f32 weights ([`crate::WeightMode::FakeQuant`]).
    Dense,
    /// Layers with packed codes ([`crate::WeightMode::Packed`]).
    Packed,
    /// Only the logs: a streamed run keeps no finished layer in memory.
    LogOnly,
}

/// One layer given back by [`LayerStore::load`].
#[derive(Debug)]
pub struct RestoredLayer {
    /// The layer's index.
    pub index: usize,
    /// The layer, ready to run (dense fake-quant or packed weights, as asked); `None` for
    /// [`Restore::LogOnly`].
    pub layer: Option<DecoderLayer>,
    /// Its quantized linears, in processing order (empty for [`Restore::LogOnly`]).
    pub quantized: Vec<(LinearId, QuantizedWeight)>,
    /// Its per-linear log.
    pub records: Vec<LinearRecord>,
    /// Its transforms' log.
    pub transforms: Vec<TransformLog>,
    /// Calibration tokens routed to each expert (MoE layers).
    pub expert_tokens: Option<Vec<usize>>,
}

/// The state of an interrupted run: its first `layers.len()` layers and the inputs of the next.
#[derive(Debug)]
pub struct RestoredRun {
    /// Layers `0..layers.len()`, in order.
    pub layers: Vec<RestoredLayer>,
    /// The calibration inputs of layer `layers.len()` (`None` for runs without calibration data).
    pub activations: Option<ActivationStore>,
    /// Its inputs in the full-precision model, where the run saved them
    /// ([`FinishedLayer::fp_activations`]).
    pub fp_activations: Option<ActivationStore>,
}

/// Durable per-layer state of a run, so that a crashed or killed run continues after its last
/// finished layer ([`crate::quantize_checkpoint_resumable`]).
pub trait LayerStore {
    /// The finished layers of an earlier run of the same job, if any, in the form `restore`
    /// asks. Called once, before the first layer.
    ///
    /// # Errors
    /// Unreadable or inconsistent state.
    fn load(
        &mut self,
        config: &qwen3_quant_model::ModelConfig,
        restore: Restore,
    ) -> Result<Option<RestoredRun>>;

    /// Makes layer `done.layer.index` durable. When this returns, a run killed at any later
    /// point resumes after this layer.
    ///
    /// # Errors
    /// I/O failures; the run stops rather than continue without its safety net.
    fn save(&mut self, done: FinishedLayer<'_>) -> Result<()>;
}

const ACT_MAGIC: &[u8; 8] = b"QQACT\x01\0\0";

fn act_err(path: &Path, reason: impl Into<String>) -> CalibError {
    CalibError::Resume(format!("{}: {}", path.display(), reason.into()))
}

impl ActivationStore {
    /// Writes the buffer to `w`: an 8-byte magic, the element type (`0` f32, `1` bf16), rows
    /// and columns as little-endian u64, then the values little-endian.
    ///
    /// # Errors
    /// The writer's.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let (tag, len) = match self {
            ActivationStore::F32 { data, .. } => (0u64, data.len()),
            ActivationStore::Bf16 { data, .. } => (1u64, data.len()),
        };
        let cols = self.cols();
        w.write_all(ACT_MAGIC)?;
        for v in [tag, (len / cols.max(1)) as u64, cols as u64] {
            w.write_all(&v.to_le_bytes())?;
        }
        // Chunks of 64 Ki values keep the temporary small whatever the buffer's size.
        let mut buf = Vec::with_capacity(1 << 18);
        match self {
            ActivationStore::F32 { data, .. } => {
                for c in data.chunks(1 << 16) {
                    buf.clear();
                    c.iter()
                        .for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
                    w.write_all(&buf)?;
                }
            }
            ActivationStore::Bf16 { data, .. } => {
                for c in data.chunks(1 << 16) {
                    buf.clear();
                    c.iter()
                        .for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
                    w.write_all(&buf)?;
                }
            }
        }
        Ok(())
    }

    /// Reads a buffer written by [`ActivationStore::write_to`] from the file `path`, checking
    /// its header against the file's length.
    ///
    /// # Errors
    /// [`CalibError::Resume`] for a missing, truncated or foreign file.
    pub fn read_file(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| act_err(path, e.to_string()))?;
        let file_len = file
            .metadata()
            .map_err(|e| act_err(path, e.to_string()))?
            .len();
        let mut r = std::io::BufReader::with_capacity(1 << 20, file);
        let mut head = [0u8; 32];
        r.read_exact(&mut head)
            .map_err(|_| act_err(path, "shorter than its header"))?;
        if &head[..8] != ACT_MAGIC {
            return Err(act_err(path, "not an activation file of this program"));
        }
        let word = |i: usize| u64::from_le_bytes(head[8 + 8 * i..16 + 8 * i].try_into().unwrap());
        let (tag, rows, cols) = (word(0), word(1), word(2));
        let elem = match tag {
            0 => 4,
            1 => 2,
            t => return Err(act_err(path, format!("unknown element type {t}"))),
        };
        let n = rows
            .checked_mul(cols)
            .filter(|&n| n.checked_mul(elem).and_then(|b| b.checked_add(32)) == Some(file_len))
            .ok_or_else(|| {
                act_err(
                    path,
                    format!("{rows}×{cols} values do not match its {file_len} bytes"),
                )
            })? as usize;
        let cols = cols as usize;
        let mut bytes = vec![0u8; (1 << 16) * elem as usize];
        let read_err = |e: std::io::Error| act_err(path, e.to_string());
        if tag == 0 {
            let mut data = Vec::with_capacity(n);
            while data.len() < n {
                let take = (n - data.len()).min(1 << 16);
                r.read_exact(&mut bytes[..take * 4]).map_err(read_err)?;
                data.extend(
                    bytes[..take * 4]
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap())),
                );
            }
            Ok(ActivationStore::F32 { data, cols })
        } else {
            let mut data = Vec::with_capacity(n);
            while data.len() < n {
                let take = (n - data.len()).min(1 << 16);
                r.read_exact(&mut bytes[..take * 2]).map_err(read_err)?;
                data.extend(
                    bytes[..take * 2]
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes(b.try_into().unwrap())),
                );
            }
            Ok(ActivationStore::Bf16 { data, cols })
        }
    }

    /// Whether two buffers hold the same element type, shape and bits.
    pub fn same_bits(&self, other: &ActivationStore) -> bool {
        match (self, other) {
            (
                ActivationStore::F32 { data: a, cols: c },
                ActivationStore::F32 { data: b, cols: d },
            ) => {
                c == d
                    && a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            }
            (
                ActivationStore::Bf16 { data: a, cols: c },
                ActivationStore::Bf16 { data: b, cols: d },
            ) => c == d && a == b,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activations::ActivationDtype;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("qq-act-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join("h.bin")
    }

    #[test]
    fn activation_files_round_trip_bit_exactly() {
        // 70 000 values cross the 64 Ki chunk boundary; NaN-free but with signed zeros.
        let v: Vec<f32> = (0..70_000)
            .map(|i| ((i as f32) * 0.37).sin() * 1e3 - 0.0)
            .collect();
        for dtype in [ActivationDtype::F32, ActivationDtype::Bf16] {
            let a = ActivationStore::new(v.clone(), 100, dtype);
            let p = tmp(&format!("{dtype:?}"));
            let mut f = std::fs::File::create(&p).unwrap();
            a.write_to(&mut f).unwrap();
            drop(f);
            let b = ActivationStore::read_file(&p).unwrap();
            assert!(a.same_bits(&b), "{dtype:?}");
        }
    }

    #[test]
    fn truncated_or_foreign_activation_files_are_typed_errors() {
        let a = ActivationStore::new(vec![1.0; 300], 3, ActivationDtype::F32);
        let p = tmp("trunc");
        let mut bytes = Vec::new();
        a.write_to(&mut bytes).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = ActivationStore::read_file(&p).unwrap_err();
        assert!(matches!(e, CalibError::Resume(_)), "{e}");
        assert!(e.to_string().contains("do not match"), "{e}");
        std::fs::write(&p, b"not an activation file at all, no").unwrap();
        let e = ActivationStore::read_file(&p).unwrap_err();
        assert!(e.to_string().contains("not an activation file"), "{e}");
        std::fs::write(&p, b"short").unwrap();
        assert!(ActivationStore::read_file(&p).is_err());
    }
}
