//! The calibration activations: one `[samples·seq, hidden]` buffer reused from layer to layer,
//! held in f32 or, to halve its memory, in bf16 (rounded to nearest even on every store).

/// Element type of the activation buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ActivationDtype {
    /// Exact f32 (the reference protocol).
    #[default]
    F32,
    /// bf16: half the memory; the residual stream is rounded to bf16 between driver stages.
    Bf16,
}

/// Row-major activations of `rows × cols`, read and written in row ranges.
#[derive(Clone, Debug)]
pub enum ActivationStore {
    /// f32 values.
    F32 {
        /// Values.
        data: Vec<f32>,
        /// Row width.
        cols: usize,
    },
    /// bf16 bit patterns.
    Bf16 {
        /// Values.
        data: Vec<u16>,
        /// Row width.
        cols: usize,
    },
}

impl ActivationStore {
    /// Stores `values` (`[rows, cols]`) in the requested dtype.
    pub fn new(values: Vec<f32>, cols: usize, dtype: ActivationDtype) -> Self {
        match dtype {
            ActivationDtype::F32 => ActivationStore::F32 { data: values, cols },
            ActivationDtype::Bf16 => ActivationStore::Bf16 {
                data: values
                    .iter()
                    .map(|&v| qwen3_quant_io::f32_to_bf16_bits(v))
                    .collect(),
                cols,
            },
        }
    }

    /// Row width.
    pub fn cols(&self) -> usize {
        match self {
            ActivationStore::F32 { cols, .. } | ActivationStore::Bf16 { cols, .. } => *cols,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            ActivationStore::F32 { data, .. } => data.len() * 4,
            ActivationStore::Bf16 { data, .. } => data.len() * 2,
        }
    }

    /// Rows `[r0, r1)` as f32.
    pub fn rows(&self, r0: usize, r1: usize) -> Vec<f32> {
        match self {
            ActivationStore::F32 { data, cols } => data[r0 * cols..r1 * cols].to_vec(),
            ActivationStore::Bf16 { data, cols } => data[r0 * cols..r1 * cols]
                .iter()
                .map(|&b| f32::from_bits((b as u32) << 16))
                .collect(),
        }
    }

    /// Overwrites rows `[r0, r0 + values.len()/cols)`.
    pub fn set_rows(&mut self, r0: usize, values: &[f32]) {
        match self {
            ActivationStore::F32 { data, cols } => {
                data[r0 * *cols..r0 * *cols + values.len()].copy_from_slice(values)
            }
            ActivationStore::Bf16 { data, cols } => {
                for (d, &v) in data[r0 * *cols..r0 * *cols + values.len()]
                    .iter_mut()
                    .zip(values)
                {
                    *d = qwen3_quant_io::f32_to_bf16_bits(v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_halves_memory() {
        let v: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect();
        let mut f = ActivationStore::new(v.clone(), 3, ActivationDtype::F32);
        let mut b = ActivationStore::new(v.clone(), 3, ActivationDtype::Bf16);
        assert_eq!(f.rows(1, 3), v[3..9].to_vec());
        assert_eq!(b.bytes() * 2, f.bytes());
        for (x, y) in b.rows(0, 4).iter().zip(&v) {
            assert!((x - y).abs() <= y.abs() / 128.0);
        }
        f.set_rows(2, &[9.0, 9.0, 9.0]);
        b.set_rows(2, &[9.0, 9.0, 9.0]);
        assert_eq!(f.rows(2, 3), vec![9.0; 3]);
        assert_eq!(b.rows(2, 3), vec![9.0; 3]);
    }
}
