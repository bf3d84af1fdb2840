//! The BiLLM block loop (reference methods §5.2, `BRAGPTQ.fasterquant`) and the assembly of the
//! [`BinaryLinear`].

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use qwen3_quant_core::method::check_weight_and_hessian;
use qwen3_quant_core::{BinaryLinear, BinaryParams, BinaryTable, MethodError};

use crate::config::BillmConfig;
use crate::hessian::{fix_dead_columns, inverse_factor};
use crate::residual::mean_and_scale;
use crate::search::{search_block, split_magnitude, BlockMasks, BlockView};

/// Everything BiLLM produced for one linear.
#[derive(Debug, Clone, PartialEq)]
pub struct BillmOutput {
    /// The binarized weight (its [`BinaryLinear::dequantize`] is the fake-quantized weight).
    pub linear: BinaryLinear,
    /// `Σ (w − q)² / d² / 2` over all weights (`d` = diagonal of the upper Cholesky factor of
    /// `H⁻¹`, `w` the weight when its column was binarized), as the reference's `Losses`.
    pub loss: f64,
    /// Damping added to the Hessian diagonal (after any retries).
    pub damp: f64,
}

/// Binarizes one `[out_features, in_features]` weight given its (normalised) Hessian
/// `[in, in]` row-major f32.
///
/// Steps as the reference `BRAGPTQ.fasterquant`: dead columns (`H[i,i] = 0` → 1, `W[:, i] = 0`);
/// `damp = percdamp · mean(diag H)`; `U = cholesky_upper(inverse(H + damp·I))` in f64, retried
/// with 10× damping on failure; then per block of `block_size` columns: the structural search
/// (salient columns, split), the binarization of the block's weights (order 2 for the salient
/// columns, order 1 with a per-row mean and scale for each non-salient group), each
/// (row, block)'s 8 values rounded to their stored int8 table, and the error feedback
/// `W[:, end:] -= Err · U[block, end:]` with `Err = (W − Q) / d`. There is no act-order.
///
/// # Errors
/// - [`MethodError::InvalidShape`], [`MethodError::NonFinite`] (weight or Hessian; `id = None`);
/// - [`MethodError::HessianNotPositiveDefinite`] for a negative diagonal entry or when the
///   factorisation still fails after `max_damp_retries`;
/// - [`MethodError::InvalidConfig`] (see [`BillmConfig::validate`]).
pub fn binarize_weight(
    w: &[f32],
    out_features: usize,
    in_features: usize,
    hessian: &[f32],
    config: &BillmConfig,
) -> Result<BillmOutput, MethodError> {
    config.validate()?;
    check_weight_and_hessian(w, out_features, in_features, hessian)?;
    let n = in_features;
    let mut h = hessian.to_vec();
    let dead = fix_dead_columns(&mut h, n)?;
    let mut wk = w.to_vec();
    if dead.iter().any(|&d| d) {
        wk.par_chunks_mut(n).for_each(|row| {
            for (x, _) in row.iter_mut().zip(&dead).filter(|(_, &d)| d) {
                *x = 0.0;
            }
        });
    }
    let factor = inverse_factor(&h, n, f64::from(config.percdamp), config.max_damp_retries)?;
    drop(h);
    let u = &factor.u;

    let bs = config.block_size;
    let n_blocks = n.div_ceil(bs);
    let mut signs = vec![0u8; out_features * n];
    let mut bit1 = vec![0u8; out_features * n];
    let mut salient = vec![false; n];
    let mut tables = vec![BinaryTable::default(); out_features * n_blocks];
    let mut loss = 0f64;
    for blk in 0..n_blocks {
        let (st, ed) = (blk * bs, ((blk + 1) * bs).min(n));
        let width = ed - st;
        let d: Vec<f32> = (st..ed).map(|j| u[j * n + j]).collect();
        let masks = search_block(
            &BlockView {
                w: &wk,
                n,
                start: st,
                width,
                d: &d,
            },
            config,
        );
        salient[st..ed].copy_from_slice(&masks.salient);
        // U over the block, for the intra-block feedback: `[width, width]`, row-major.
        let ublk: Vec<f32> = if config.intra_block_feedback {
            (st..ed)
                .flat_map(|i| u[i * n + st..i * n + ed].iter().copied())
                .collect()
        } else {
            Vec::new()
        };
        let mut err = vec![0f32; out_features * width];
        let block_loss: Result<f64, MethodError> = wk
            .par_chunks_mut(n)
            .zip(signs.par_chunks_mut(n))
            .zip(bit1.par_chunks_mut(n))
            .zip(tables.par_chunks_mut(n_blocks))
            .zip(err.par_chunks_mut(width))
            .map(|((((wr, sr), br), tr), er)| {
                let row = RowBlock {
                    w: &mut wr[st..ed],
                    signs: &mut sr[st..ed],
                    bit1: &mut br[st..ed],
                    err: er,
                };
                let (table, l) = binarize_row(row, &d, &ublk, &masks, config)?;
                tr[blk] = table;
                Ok(l)
            })
            .sum();
        loss += block_loss?;
        if config.error_feedback && ed < n {
            // W[:, ed:] -= Err[rows, width] · U[st:ed, ed:]
            // SAFETY: dst (r, j) at r·n + ed + j < rows·n; lhs (r, k) at r·width + k <
            // rows·width; rhs (k, j) at (st + k)·n + ed + j < n·n. All slices have those lengths.
            unsafe {
                gemm(
                    out_features,
                    n - ed,
                    width,
                    wk.as_mut_ptr().add(ed),
                    1,
                    n as isize,
                    true,
                    err.as_ptr(),
                    1,
                    width as isize,
                    u.as_ptr().add(st * n + ed),
                    1,
                    n as isize,
                    1.0,
                    -1.0,
                    false,
                    false,
                    false,
                    Parallelism::Rayon(rayon::current_num_threads()),
                );
            }
        }
    }
    let linear = BinaryLinear::new(out_features, n, bs, signs, bit1, salient, tables)?;
    Ok(BillmOutput {
        linear,
        loss,
        damp: factor.damp,
    })
}

/// One row's slice of the current block.
struct RowBlock<'a> {
    w: &'a mut [f32],
    signs: &'a mut [u8],
    bit1: &'a mut [u8],
    err: &'a mut [f32],
}

/// Binarizes one row of a block: the means and scales of its three groups (from the weights at
/// the block start), the stored table, then per column the signs, `Err = (w − q) / d` and the
/// loss; with intra-block feedback each column's error updates the rest of the row's block first.
fn binarize_row(
    row: RowBlock<'_>,
    d: &[f32],
    ublk: &[f32],
    masks: &BlockMasks,
    cfg: &BillmConfig,
) -> Result<(BinaryTable, f64), MethodError> {
    let width = row.w.len();
    // Group of each column: 0 sparse, 1 concentrated, 2 salient.
    let group: Vec<u8> = (0..width)
        .map(|j| {
            if masks.salient[j] {
                2
            } else {
                u8::from(f64::from(split_magnitude(row.w[j], d[j], cfg)) >= masks.split)
            }
        })
        .collect();
    let pick = |g: u8| -> Vec<f32> {
        (0..width)
            .filter(|&j| group[j] == g)
            .map(|j| row.w[j])
            .collect()
    };
    let sparse = mean_and_scale(&pick(0));
    let concentrated = mean_and_scale(&pick(1));
    let sal = pick(2);
    let salient_first = mean_and_scale(&sal);
    let first = |v: f32| {
        let [mu, a] = salient_first;
        mu + if v >= mu { a } else { -a }
    };
    let residual: Vec<f32> = sal.iter().map(|&v| v - first(v)).collect();
    let salient_second = mean_and_scale(&residual);
    let params = BinaryParams {
        sparse,
        concentrated,
        salient_first,
        salient_second,
    };
    let table = params
        .quantized_table()
        .map_err(|_| MethodError::NonFinite {
            id: None,
            what: "binary params",
            index: 0,
        })?;
    let values = table.values();
    let mut loss = 0f64;
    for j in 0..width {
        let v = row.w[j];
        let (sign, b1) = match group[j] {
            2 => {
                let s1 = v >= salient_first[0];
                (s1, v - first(v) >= salient_second[0])
            }
            0 => (v >= sparse[0], false),
            _ => (v >= concentrated[0], true),
        };
        let (sign, b1) = (u8::from(sign), u8::from(b1));
        row.signs[j] = sign;
        row.bit1[j] = b1;
        let q = values[BinaryTable::index(group[j] == 2, b1, sign)];
        let diff = v - q;
        loss += f64::from(diff) * f64::from(diff) / (f64::from(d[j]) * f64::from(d[j])) / 2.0;
        let e = diff / d[j];
        row.err[j] = e;
        if cfg.intra_block_feedback {
            let urow = &ublk[j * width..(j + 1) * width];
            for (wk, &uk) in row.w[j + 1..].iter_mut().zip(&urow[j + 1..]) {
                *wk -= e * uk;
            }
        }
    }
    if !loss.is_finite() {
        return Err(MethodError::NonFinite {
            id: None,
            what: "binarization loss",
            index: 0,
        });
    }
    Ok((table, loss))
}
