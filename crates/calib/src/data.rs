//! Calibration sets: which token windows the statistics are collected on.
//!
//! Four samplers cover the reference tools: the first N non-overlapping windows (reproducible in
//! any language; our parity protocol), N random windows of one token stream (seeded), the GPTQ
//! sampler (a random document longer than the window, then a random offset), and the AWQ style
//! (short documents concatenated and cut into blocks).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{CalibError, Result};

/// Equal-length token windows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalibrationSet {
    /// Tokens per window.
    pub seq_len: usize,
    /// The windows, each exactly `seq_len` tokens.
    pub windows: Vec<Vec<u32>>,
    /// How the windows were chosen (recorded in reports).
    pub description: String,
}

impl CalibrationSet {
    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows.len()
    }

    /// Whether there are no windows.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Total tokens.
    pub fn tokens(&self) -> usize {
        self.windows.len() * self.seq_len
    }

    /// Windows `[start, end)` flattened into one id buffer.
    pub fn flat(&self, start: usize, end: usize) -> Vec<u32> {
        self.windows[start..end].iter().flatten().copied().collect()
    }

    /// A stable fingerprint of the windows (FNV-1a over the ids), for resume checks.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for w in &self.windows {
            for &t in w {
                for b in t.to_le_bytes() {
                    h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
                }
            }
        }
        h ^ (self.seq_len as u64)
    }
}

fn check(n: usize, seq_len: usize) -> Result<()> {
    if n == 0 || seq_len < 2 {
        return Err(CalibError::InvalidOptions(format!(
            "need at least one window of at least 2 tokens (got {n} × {seq_len})"
        )));
    }
    Ok(())
}

/// The first `n` non-overlapping windows of `ids` (the parity protocol: tokens `[0, n·seq_len)`).
///
/// ```
/// let ids: Vec<u32> = (0..100).collect();
/// let set = qwen3_quant_calib::first_windows(&ids, 3, 10).unwrap();
/// assert_eq!(set.windows[2][0], 20);
/// ```
pub fn first_windows(ids: &[u32], n: usize, seq_len: usize) -> Result<CalibrationSet> {
    check(n, seq_len)?;
    if ids.len() < n * seq_len {
        return Err(CalibError::NotEnoughTokens {
            needed: n * seq_len,
            available: ids.len(),
        });
    }
    Ok(CalibrationSet {
        seq_len,
        windows: ids
            .chunks_exact(seq_len)
            .take(n)
            .map(<[u32]>::to_vec)
            .collect(),
        description: format!("first {n} windows of {seq_len} tokens"),
    })
}

/// `n` windows at uniformly random offsets of one token stream (ChaCha8, `seed`).
pub fn random_windows(ids: &[u32], n: usize, seq_len: usize, seed: u64) -> Result<CalibrationSet> {
    check(n, seq_len)?;
    if ids.len() < seq_len {
        return Err(CalibError::NotEnoughTokens {
            needed: seq_len,
            available: ids.len(),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let windows = (0..n)
        .map(|_| {
            let s = rng.gen_range(0..=ids.len() - seq_len);
            ids[s..s + seq_len].to_vec()
        })
        .collect();
    Ok(CalibrationSet {
        seq_len,
        windows,
        description: format!("{n} random windows of {seq_len} tokens, seed {seed}"),
    })
}

/// The GPTQ sampler: repeatedly pick a random document with more than `seq_len` tokens, then a
/// random window inside it (reference-methods.md §2.5, with ChaCha8 instead of Python's MT19937).
pub fn gptq_windows(
    docs: &[Vec<u32>],
    n: usize,
    seq_len: usize,
    seed: u64,
) -> Result<CalibrationSet> {
    check(n, seq_len)?;
    let long: Vec<&Vec<u32>> = docs.iter().filter(|d| d.len() > seq_len).collect();
    if long.is_empty() {
        return Err(CalibError::NotEnoughTokens {
            needed: seq_len + 1,
            available: docs.iter().map(Vec::len).max().unwrap_or(0),
        });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let windows = (0..n)
        .map(|_| {
            let d = long[rng.gen_range(0..long.len())];
            let s = rng.gen_range(0..d.len() - seq_len);
            d[s..s + seq_len].to_vec()
        })
        .collect();
    Ok(CalibrationSet { seq_len, windows, description: format!("GPTQ sampler: {n} windows of {seq_len} tokens from documents longer than that, seed {seed}") })
}

/// AWQ style: take documents of at most `seq_len` tokens in order (first `max_docs` of them),
/// concatenate them and cut into blocks of `seq_len` (tail dropped; reference-methods.md §3.2).
pub fn awq_blocks(docs: &[Vec<u32>], max_docs: usize, seq_len: usize) -> Result<CalibrationSet> {
    check(max_docs, seq_len)?;
    let cat: Vec<u32> = docs
        .iter()
        .filter(|d| !d.is_empty() && d.len() <= seq_len)
        .take(max_docs)
        .flatten()
        .copied()
        .collect();
    let n = cat.len() / seq_len;
    if n == 0 {
        return Err(CalibError::NotEnoughTokens {
            needed: seq_len,
            available: cat.len(),
        });
    }
    let windows = cat.chunks_exact(seq_len).map(<[u32]>::to_vec).collect();
    Ok(CalibrationSet {
        seq_len,
        windows,
        description: format!(
            "AWQ style: {n} blocks of {seq_len} tokens from ≤{max_docs} short documents"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samplers_are_deterministic_and_in_range() {
        let ids: Vec<u32> = (0..1000).collect();
        let a = random_windows(&ids, 5, 64, 7).unwrap();
        assert_eq!(a, random_windows(&ids, 5, 64, 7).unwrap());
        assert_ne!(a.windows, random_windows(&ids, 5, 64, 8).unwrap().windows);
        for w in &a.windows {
            assert_eq!(w.len(), 64);
            assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
        }
        let docs = vec![
            (0..50).collect::<Vec<u32>>(),
            (100..400).collect(),
            (500..520).collect(),
        ];
        let g = gptq_windows(&docs, 4, 64, 0).unwrap();
        assert!(g.windows.iter().all(|w| w[0] >= 100 && w[63] < 400));
        // Documents of at most 64 tokens (the 50- and 20-token ones) give one 64-token block.
        let b = awq_blocks(&docs, 10, 64).unwrap();
        assert_eq!(b.len(), 1);
        assert_eq!(b.windows[0][..50], (0..50).collect::<Vec<u32>>()[..]);
        assert!(awq_blocks(&docs, 10, 16).is_err());
        assert!(first_windows(&ids, 20, 64).is_err());
        assert!(first_windows(&ids, 0, 64).is_err());
        assert_eq!(
            first_windows(&ids, 2, 10).unwrap().fingerprint(),
            first_windows(&ids, 2, 10).unwrap().fingerprint()
        );
    }
}
