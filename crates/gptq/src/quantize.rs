//! The GPTQ column loop (reference-methods §2.3) and the assembly of the [`QuantizedLinear`].
//!
//! Every output row evolves independently in GPTQ (the error feedback of row `r` only touches
//! row `r`), so rows are split into chunks processed in parallel with rayon; inside a chunk the
//! reference's blocking is kept: intra-block rank-1 updates, then one lazy GEMM
//! `W[:, i2:] -= Err1 · U[i1:i2, i2:]` per block (`gemm` crate).

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use qwen3_quant_core::method::check_weight_and_hessian;
use qwen3_quant_core::{
    canonical_g_idx, dequantize_code, find_params, find_params_mse, quantize_code, GroupSize,
    MethodError, MseSearch, QuantParams, QuantScheme, QuantizedLinear, RangeConvention,
};

use crate::config::GptqConfig;
use crate::hessian::act_order_perm;
use crate::refine::{refine_quantized, DampedHessian, Grid, Refinement};
use qwen3_quant_core::linalg::inverse_cholesky_upper_consuming;

/// Everything GPTQ produced for one linear.
#[derive(Debug, Clone, PartialEq)]
pub struct GptqOutput {
    /// The quantized weight (codes in original column order).
    pub linear: QuantizedLinear,
    /// The fake-quantized weight `[out, in]` (original column order) computed by the column loop;
    /// equal to `linear.dequantize()` bit for bit.
    pub fake_quant: Vec<f32>,
    /// `Σ (w − q)² / d² / 2` over all weights (`d` = diagonal of the upper Cholesky factor of H⁻¹).
    pub loss: f64,
    /// Damping added to the Hessian diagonal (after any retries).
    pub damp: f64,
}

/// How the `(scale, zero)` of a column is obtained.
enum ParamSource<'a> {
    /// One pair per row, computed on the original W: `[out]`.
    PerChannel(&'a [QuantParams]),
    /// Computed on the partially updated W at each group boundary (processing order).
    Dynamic(usize),
    /// Precomputed on the original W over original column groups: `[out, n_groups]`, with the
    /// group of each processing position.
    Static {
        params: &'a [QuantParams],
        n_groups: usize,
        group_of_pos: &'a [u32],
    },
}

struct Shared<'a> {
    n: usize,
    u: &'a [f32],
    block: usize,
    maxq: u8,
    scheme: QuantScheme,
    src: ParamSource<'a>,
    n_groups_out: usize,
    /// The range search of dynamic groups, with its error weights in processing order.
    search: Option<(MseSearch, Option<&'a [f32]>)>,
    /// First-order compensation: `beta` and the target weight in processing order `[out, n]`.
    first_order: Option<(f32, &'a [f32])>,
}

/// A group's parameters: min/max, or the range search with `weights` (the Hessian diagonal of
/// the group's columns, when weighted).
fn group_params(
    values: &[f32],
    scheme: &QuantScheme,
    search: Option<&MseSearch>,
    weights: Option<&[f32]>,
) -> QuantParams {
    match search {
        None => find_params(values, scheme),
        Some(m) => find_params_mse(values, scheme, weights, m),
    }
}

/// Runs GPTQ on one `[out_features, in_features]` weight given its (normalised) Hessian
/// `[in, in]` row-major f32.
///
/// Steps as in the reference `fasterquant`: per-channel params on the original W; dead columns
/// (`H[i,i] == 0` → `H[i,i] = 1`, `W[:, i] = 0`); act-order permutation (stable descending diag);
/// `damp = percdamp · mean(diag H)`; `U = cholesky_upper(inverse(H + damp·I))` in f64 (faer),
/// retried with 10× damping on failure; the blocked column loop in f32.
///
/// # Errors
/// - [`MethodError::InvalidShape`], [`MethodError::NonFinite`] (weight or Hessian; `id = None`);
/// - [`MethodError::HessianNotPositiveDefinite`] with the **original** column index when the
///   diagonal is negative or Cholesky still fails after `max_damp_retries`;
/// - [`MethodError::UnsupportedBits`], [`MethodError::InvalidConfig`] (see [`GptqConfig::validate`]).
pub fn quantize_weight(
    w: &[f32],
    out_features: usize,
    in_features: usize,
    hessian: &[f32],
    config: &GptqConfig,
) -> Result<GptqOutput, MethodError> {
    quantize_weight_scaled(w, out_features, in_features, hessian, 1.0, config)
}

/// [`quantize_weight`] on the Hessian `scale · hessian`, scaled on the fly.
///
/// The result is bit-identical to `quantize_weight` on the scaled copy (each entry is the same
/// f32 product), without holding that copy: for Qwen3-8B's `down_proj` it is 600 MB, as is the
/// permuted copy that is also never formed (the factorisation reads the entries through the
/// permutation).
///
/// # Errors
/// As [`quantize_weight`], the finiteness check applying to the scaled entries.
pub fn quantize_weight_scaled(
    w: &[f32],
    out_features: usize,
    in_features: usize,
    hessian: &[f32],
    scale: f32,
    config: &GptqConfig,
) -> Result<GptqOutput, MethodError> {
    check_inputs(w, out_features, in_features, hessian, scale, config)?;
    run(
        w,
        out_features,
        in_features,
        HessianSource::Full(hessian),
        scale,
        config,
    )
}

/// [`quantize_weight_scaled`] on a Hessian it owns: the same result, bit for bit, with less
/// memory. Unless the configuration refines the codes afterwards (which multiplies by the whole
/// matrix), the Hessian is first compacted in place to its lower triangle and the upper half is
/// given back, so that the f64 factor is formed next to half of it: 300 MB less at the peak
/// for Qwen3-8B's `down_proj` (`n = 12288`).
///
/// # Errors
/// As [`quantize_weight_scaled`].
pub fn quantize_weight_scaled_owned(
    w: &[f32],
    out_features: usize,
    in_features: usize,
    mut hessian: Vec<f32>,
    scale: f32,
    config: &GptqConfig,
) -> Result<GptqOutput, MethodError> {
    check_inputs(w, out_features, in_features, &hessian, scale, config)?;
    if config.refine_passes > 0 {
        return run(
            w,
            out_features,
            in_features,
            HessianSource::Full(&hessian),
            scale,
            config,
        );
    }
    let n = in_features;
    // Row i's entries 0..=i move to i(i+1)/2: never past where they are read from, so one
    // forward sweep packs the triangle in place.
    for i in 1..n {
        hessian.copy_within(i * n..i * n + i + 1, i * (i + 1) / 2);
    }
    hessian.truncate(n * (n + 1) / 2);
    hessian.shrink_to_fit();
    let source = HessianSource::PackedLower(hessian);
    run(w, out_features, in_features, source, scale, config)
}

/// A symmetric `[n, n]` Hessian: borrowed whole and row-major, or owned as its lower triangle
/// packed by rows (entry `(i, j)`, `j ≤ i`, at `i(i+1)/2 + j`), which the factorisation drops
/// once it no longer needs it.
enum HessianSource<'a> {
    Full(&'a [f32]),
    PackedLower(Vec<f32>),
}

impl HessianSource<'_> {
    #[inline(always)]
    fn at(&self, n: usize, i: usize, j: usize) -> f32 {
        match self {
            HessianSource::Full(h) => h[i * n + j],
            HessianSource::PackedLower(h) => {
                let (a, b) = if i >= j { (i, j) } else { (j, i) };
                h[a * (a + 1) / 2 + b]
            }
        }
    }
}

/// The checks every entry point runs first (configuration, shapes, finite scaled entries).
fn check_inputs(
    w: &[f32],
    out_features: usize,
    in_features: usize,
    hessian: &[f32],
    scale: f32,
    config: &GptqConfig,
) -> Result<(), MethodError> {
    config.validate()?;
    check_weight_and_hessian(w, out_features, in_features, hessian)?;
    if let Some(index) = hessian.iter().position(|v| !(v * scale).is_finite()) {
        return Err(MethodError::NonFinite {
            id: None,
            what: "hessian",
            index,
        });
    }
    Ok(())
}

/// GPTQ after [`check_inputs`].
fn run(
    w: &[f32],
    out_features: usize,
    in_features: usize,
    hessian: HessianSource<'_>,
    scale: f32,
    config: &GptqConfig,
) -> Result<GptqOutput, MethodError> {
    let n = in_features;
    let scaled_at = |h: &HessianSource<'_>, i: usize, j: usize| h.at(n, i, j) * scale;
    let hessian_at = |i: usize, j: usize| scaled_at(&hessian, i, j);
    let group = match config.group_size {
        Some(g) => GroupSize::group(g)?,
        None => GroupSize::PerChannel,
    };
    let scheme = QuantScheme::new(config.bits, group, config.sym, RangeConvention::Gptq)?;
    let maxq = scheme.maxq();
    let n_groups = group.n_groups(n);

    let search = config.mse.as_ref();
    let raw_diag: Vec<f32> = (0..n).map(|i| hessian_at(i, i)).collect();
    let weighted = config.mse_hessian_weighted;
    // Per-channel params first, on the original W (before dead columns are zeroed).
    let channel_params: Vec<QuantParams> = if config.group_size.is_none() {
        w.par_chunks(n)
            .map(|row| group_params(row, &scheme, search, weighted.then_some(&raw_diag[..])))
            .collect()
    } else {
        Vec::new()
    };

    // Dead columns.
    let mut diag: Vec<f32> = (0..n).map(|i| hessian_at(i, i)).collect();
    if let Some(c) = diag.iter().position(|&d| d < 0.0) {
        return Err(MethodError::HessianNotPositiveDefinite {
            id: None,
            column: c,
            damp: 0.0,
        });
    }
    let dead: Vec<bool> = diag.iter().map(|&d| d == 0.0).collect();
    dead.iter()
        .zip(diag.iter_mut())
        .filter(|(d, _)| **d)
        .for_each(|(_, v)| *v = 1.0);

    // Act-order permutation.
    let perm: Option<Vec<u32>> = config.act_order.then(|| act_order_perm(&diag));
    let orig_col = |j: usize| perm.as_ref().map_or(j, |p| p[j] as usize);
    // The permuted Hessian (f32, as the reference) with dead diagonal entries set to 1, read
    // entry by entry by the factorisation rather than copied.
    let permuted = |h: &HessianSource<'_>, i: usize, j: usize| {
        let (pi, pj) = (orig_col(i), orig_col(j));
        if pi == pj && dead[pi] {
            1.0
        } else {
            scaled_at(h, pi, pj)
        }
    };
    // A borrowed whole matrix stays for the refinement; an owned packed one goes to the
    // factorisation, which drops it once the Cholesky factor exists.
    let whole = match hessian {
        HessianSource::Full(h) => Some(h),
        HessianSource::PackedLower(_) => None,
    };
    let (percdamp, retries) = (config.percdamp as f64, config.max_damp_retries);
    let factor = inverse_cholesky_upper_consuming(n, hessian, permuted, percdamp, retries)
        .map_err(|f| MethodError::HessianNotPositiveDefinite {
            id: None,
            column: orig_col(f.column.min(n - 1)),
            damp: f.damp,
        })?;

    // The working copy is made after the factorisation, whose f64 factor is the peak of the
    // method's memory (one f32 copy of the weight fewer there: 200 MB for Qwen3-8B's
    // `down_proj`).
    let mut w0 = w.to_vec();
    if dead.iter().any(|&d| d) {
        w0.par_chunks_mut(n).for_each(|row| {
            row.iter_mut()
                .zip(&dead)
                .filter(|(_, &d)| d)
                .for_each(|(x, _)| *x = 0.0);
        });
    }

    // Static groups: params on the original (dead-zeroed) W over original column groups.
    let static_params: Vec<QuantParams> = match (config.static_groups, config.group_size) {
        (true, Some(gs)) => w0
            .par_chunks(n)
            .flat_map_iter(|row| {
                row.chunks(gs).enumerate().map(|(g, vals)| {
                    let c = &raw_diag[g * gs..g * gs + vals.len()];
                    group_params(vals, &scheme, search, weighted.then_some(c))
                })
            })
            .collect(),
        _ => Vec::new(),
    };

    // W in processing order.
    let mut wp = match &perm {
        Some(p) => {
            let mut wp = vec![0f32; out_features * n];
            wp.par_chunks_mut(n)
                .zip(w0.par_chunks(n))
                .for_each(|(dst, src)| {
                    for (d, &c) in dst.iter_mut().zip(p) {
                        *d = src[c as usize];
                    }
                });
            drop(w0);
            wp
        }
        None => w0,
    };

    let group_of_pos: Vec<u32> = match (&static_params.is_empty(), config.group_size) {
        (false, Some(gs)) => (0..n).map(|j| (orig_col(j) / gs) as u32).collect(),
        _ => Vec::new(),
    };
    let src = if config.group_size.is_none() {
        ParamSource::PerChannel(&channel_params)
    } else if config.static_groups {
        ParamSource::Static {
            params: &static_params,
            n_groups,
            group_of_pos: &group_of_pos,
        }
    } else {
        ParamSource::Dynamic(config.group_size.unwrap_or(n))
    };
    let diag_p: Vec<f32> = (0..n).map(|j| raw_diag[orig_col(j)]).collect();
    // FOEM measures each latent column's drift from the weight the loss is centred on.
    let target_p: Vec<f32> = match config.first_order {
        Some(_) => wp.clone(),
        None => Vec::new(),
    };
    let sh = Shared {
        first_order: config.first_order.map(|b| (b, target_p.as_slice())),
        search: search.map(|m| (*m, weighted.then_some(diag_p.as_slice()))),
        n,
        u: &factor.u,
        block: config.block_size.min(n),
        maxq,
        scheme,
        src,
        n_groups_out: n_groups,
    };

    // Column loop, rows in parallel chunks; `wp` becomes the fake-quantized weight.
    let mut codes_p = vec![0u8; out_features * n];
    let mut params = vec![
        QuantParams {
            scale: 0.0,
            zero: 0.0
        };
        out_features * n_groups
    ];
    let threads = rayon::current_num_threads().max(1);
    // Small row chunks keep the transposed block (`block × rows`) in L2; U is re-read per chunk.
    let chunk_rows = out_features.div_ceil(threads * 2).clamp(16, 128);
    let loss: f64 = wp
        .par_chunks_mut(chunk_rows * n)
        .zip(codes_p.par_chunks_mut(chunk_rows * n))
        .zip(params.par_chunks_mut(chunk_rows * n_groups))
        .enumerate()
        .map(|(ci, ((wc, cc), pc))| run_chunk(&sh, ci * chunk_rows, wc, cc, pc))
        .sum();
    let mut qp = wp;

    // Back to the original column order. The FOEM targets go first, and the fake-quantized
    // rows are permuted in place through a row buffer: one f32 copy of the weight fewer at the
    // peak (200 MB for Qwen3-8B's `down_proj`).
    drop(target_p);
    let (mut codes, mut fake_quant) = match &perm {
        Some(p) => {
            let mut codes = vec![0u8; out_features * n];
            qp.par_chunks_mut(n)
                .zip(codes.par_chunks_mut(n))
                .zip(codes_p.par_chunks(n))
                .for_each_init(
                    || vec![0f32; n],
                    |row, ((fr, cr), cp)| {
                        row.copy_from_slice(fr);
                        for (j, &c) in p.iter().enumerate() {
                            cr[c as usize] = cp[j];
                            fr[c as usize] = row[j];
                        }
                    },
                );
            (codes, qp)
        }
        None => (codes_p, qp),
    };
    // Only desc_act groups need the permutation to describe the layout.
    let out_perm = match (config.group_size, config.static_groups) {
        (Some(_), false) => perm,
        _ => None,
    };
    let g_idx = canonical_g_idx(n, config.group_size, out_perm.as_deref());
    if let (true, Some(hessian)) = (config.refine_passes > 0, whole) {
        let h = DampedHessian {
            hessian,
            scale,
            damp: factor.damp as f32,
        };
        let grid = Grid {
            params: &mut params,
            n_groups,
            g_idx: &g_idx,
            maxq,
        };
        let how = Refinement {
            passes: config.refine_passes,
            scale_rounds: config.refit_scales,
        };
        refine_quantized(w, &dead, &h, grid, how, &mut codes, &mut fake_quant);
    }
    let mut scales = vec![0f32; n_groups * out_features];
    let mut zeros = vec![0u8; n_groups * out_features];
    for r in 0..out_features {
        for g in 0..n_groups {
            let p = params[r * n_groups + g];
            scales[g * out_features + r] = p.scale;
            zeros[g * out_features + r] = p.zero_code();
        }
    }
    if let Some(index) = scales.iter().position(|s| !s.is_finite()) {
        return Err(MethodError::NonFinite {
            id: None,
            what: "scales",
            index,
        });
    }
    if let Some(index) = fake_quant.iter().position(|s| !s.is_finite()) {
        return Err(MethodError::NonFinite {
            id: None,
            what: "quantized weight",
            index,
        });
    }
    let linear = QuantizedLinear::new(
        out_features,
        n,
        config.bits,
        config.group_size,
        config.sym,
        codes,
        scales,
        zeros,
        g_idx,
        out_perm,
    )?;
    Ok(GptqOutput {
        linear,
        fake_quant,
        loss,
        damp: factor.damp,
    })
}

/// GPTQ on `rows` consecutive output rows starting at `row0` (all blocks). Returns the loss.
///
/// Inside a block the working copy `W1` is kept transposed (`[bsz, rows]`), so the per-column
/// quantization and the rank-1 updates run across rows with unit stride (vectorised) instead of
/// along one row's dependency chain.
fn run_chunk(
    sh: &Shared<'_>,
    row0: usize,
    w: &mut [f32],
    codes: &mut [u8],
    params: &mut [QuantParams],
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected at runtime.
        return unsafe { run_chunk_avx2(sh, row0, w, codes, params) };
    }
    run_chunk_impl(sh, row0, w, codes, params)
}

/// [`run_chunk_impl`] compiled with AVX2 (wider vectors for the rank-1 updates and a vectorised
/// round-half-even). No FMA is enabled, so results are bit-identical to the generic path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_chunk_avx2(
    sh: &Shared<'_>,
    row0: usize,
    w: &mut [f32],
    codes: &mut [u8],
    params: &mut [QuantParams],
) -> f64 {
    run_chunk_impl(sh, row0, w, codes, params)
}

#[inline(always)]
fn run_chunk_impl(
    sh: &Shared<'_>,
    row0: usize,
    w: &mut [f32],
    codes: &mut [u8],
    params: &mut [QuantParams],
) -> f64 {
    let n = sh.n;
    let rows = w.len() / n;
    let bmax = sh.block;
    let ng = sh.n_groups_out;
    let mut w1t = vec![0f32; bmax * rows];
    let mut errt = vec![0f32; bmax * rows];
    let mut qt = vec![0f32; bmax * rows];
    let mut ct = vec![0u8; bmax * rows];
    // The block's target columns (transposed like W1), for the first-order compensation.
    let mut targett = vec![
        0f32;
        if sh.first_order.is_some() {
            bmax * rows
        } else {
            0
        }
    ];
    let mut scale = vec![0f32; rows];
    let mut zero = vec![0f32; rows];
    let mut loss = 0f64;
    // Params that do not change along the loop are written once.
    match &sh.src {
        ParamSource::PerChannel(pc) => {
            for r in 0..rows {
                params[r] = pc[row0 + r];
                scale[r] = pc[row0 + r].scale;
                zero[r] = pc[row0 + r].zero;
            }
        }
        ParamSource::Static {
            params: sp,
            n_groups,
            ..
        } => {
            params.copy_from_slice(&sp[row0 * n_groups..(row0 + rows) * n_groups]);
        }
        ParamSource::Dynamic(_) => {}
    }
    let mut i1 = 0;
    while i1 < n {
        let i2 = (i1 + bmax).min(n);
        let bsz = i2 - i1;
        let beta = sh.first_order.map(|(beta, target)| {
            let chunk = &target[row0 * n..(row0 + rows) * n];
            if i1 > 0 {
                // The drift shrink of the column after the previous block's last one, in W so
                // that a group starting here sees it.
                for k in (0..rows).map(|r| r * n + i1) {
                    w[k] -= beta * (w[k] - chunk[k]);
                }
            }
            transpose(&chunk[i1..], n, &mut targett, rows, rows, bsz);
            beta
        });
        // W1ᵀ[i, r] = W[r, i1 + i]
        transpose(&w[i1..], n, &mut w1t, rows, rows, bsz);
        if let ParamSource::Dynamic(gs) = sh.src {
            // Params of the group containing the block's first column (recomputed below if the
            // block starts a group).
            for r in 0..rows {
                let p = params[r * ng + i1 / gs];
                scale[r] = p.scale;
                zero[r] = p.zero;
            }
        }
        for i in 0..bsz {
            let col = i1 + i;
            match &sh.src {
                ParamSource::PerChannel(_) => {}
                ParamSource::Dynamic(gs) => {
                    if col % gs == 0 {
                        let end = (col + gs).min(n);
                        for r in 0..rows {
                            // Reads W (state at the block start), not W1: as the reference.
                            let p = match &sh.search {
                                None => find_params(&w[r * n + col..r * n + end], &sh.scheme),
                                Some((m, weights)) => find_params_mse(
                                    &w[r * n + col..r * n + end],
                                    &sh.scheme,
                                    weights.map(|c| &c[col..end]),
                                    m,
                                ),
                            };
                            params[r * ng + col / gs] = p;
                            scale[r] = p.scale;
                            zero[r] = p.zero;
                        }
                    }
                }
                ParamSource::Static {
                    group_of_pos,
                    n_groups,
                    ..
                } => {
                    let g = group_of_pos[col] as usize;
                    for r in 0..rows {
                        let p = params[r * n_groups + g];
                        scale[r] = p.scale;
                        zero[r] = p.zero;
                    }
                }
            }
            let urow = &sh.u[col * n + i1..col * n + i2];
            let d = urow[i];
            let (head, tail) = w1t.split_at_mut((i + 1) * rows);
            let x = &head[i * rows..];
            let e = &mut errt[i * rows..(i + 1) * rows];
            let qrow = &mut qt[i * rows..(i + 1) * rows];
            let crow = &mut ct[i * rows..(i + 1) * rows];
            let mut sq = 0f64;
            for r in 0..rows {
                let p = QuantParams {
                    scale: scale[r],
                    zero: zero[r],
                };
                let code = quantize_code(x[r], p, sh.maxq);
                let qv = dequantize_code(code, p);
                crow[r] = code;
                qrow[r] = qv;
                let diff = x[r] - qv;
                sq += (diff as f64) * (diff as f64);
                e[r] = diff / d;
            }
            if let Some(beta) = beta {
                // FOEM: the drift from the target is the gradient's first-order term; the
                // propagated error gives back that share of it.
                let t = &targett[i * rows..(i + 1) * rows];
                for ((er, &xr), &tr) in e.iter_mut().zip(x).zip(t) {
                    *er -= beta * (xr - tr) / d;
                }
            }
            loss += sq / (d as f64 * d as f64) / 2.0;
            // W1[:, k] -= err · U[col, k] for the rest of the block.
            for (k, wk) in tail[..(bsz - i - 1) * rows]
                .chunks_exact_mut(rows)
                .enumerate()
            {
                let uk = urow[i + 1 + k];
                for (a, &b) in wk.iter_mut().zip(e.iter()) {
                    *a -= b * uk;
                }
            }
            if let (Some(beta), true) = (beta, i + 1 < bsz) {
                let t = &targett[(i + 1) * rows..(i + 2) * rows];
                shrink_drift(&mut tail[..rows], t, beta);
            }
        }
        // The block's quantized values replace its columns of W, which nothing reads again
        // (group parameters read only columns at or after the current one): W ends as the
        // fake-quantized weight, with no second `[out, in]` array.
        transpose(&qt, rows, &mut w[i1..], n, bsz, rows);
        transpose(&ct, rows, &mut codes[i1..], n, bsz, rows);
        if i2 < n {
            // W[:, i2:] -= Err1[rows, bsz] · U[i1:i2, i2:]   (Err1 stored transposed)
            // SAFETY: dst (r, j) at r*n + i2 + j < rows*n; lhs (r, k) at k*rows + r < bmax*rows;
            // rhs (k, j) at (i1+k)*n + i2 + j < n*n. All slices have those lengths.
            unsafe {
                gemm(
                    rows,
                    n - i2,
                    bsz,
                    w.as_mut_ptr().add(i2),
                    1,
                    n as isize,
                    true,
                    errt.as_ptr(),
                    rows as isize,
                    1,
                    sh.u.as_ptr().add(i1 * n + i2),
                    1,
                    n as isize,
                    1.0,
                    -1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        }
        i1 = i2;
    }
    loss
}

/// `w -= beta · (w − target)`: FOEM's pull of the next latent column towards its target.
#[inline(always)]
fn shrink_drift(w: &mut [f32], target: &[f32], beta: f32) {
    for (a, &t) in w.iter_mut().zip(target) {
        *a -= beta * (*a - t);
    }
}

/// `dst[j * dst_rs + i] = src[i * src_rs + j]` for `i < n_rows`, `j < n_cols` (tiled so both the
/// reads and the strided writes stay in cache).
fn transpose<T: Copy>(
    src: &[T],
    src_rs: usize,
    dst: &mut [T],
    dst_rs: usize,
    n_rows: usize,
    n_cols: usize,
) {
    const TILE: usize = 16;
    for i0 in (0..n_rows).step_by(TILE) {
        for j0 in (0..n_cols).step_by(TILE) {
            for i in i0..(i0 + TILE).min(n_rows) {
                let srow = &src[i * src_rs..];
                for j in j0..(j0 + TILE).min(n_cols) {
                    dst[j * dst_rs + i] = srow[j];
                }
            }
        }
    }
}
