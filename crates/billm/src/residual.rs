//! BiLLM's binarization primitive, `binary.py::high_order_residual(x, mask, order)` (reference
//! methods §5.4), on one row's masked entries of a block.
//!
//! Per order: `μ = mean(r)`, `α = mean|r − μ|`, `b = μ + α·sign(r − μ)` (with `sign(0) = 0`, so an
//! entry exactly at the mean maps to `μ`), `r ← r − b`; the reconstruction is the sum of the
//! `b`s. Means and scales are computed in f32 like the reference; the errors the searches
//! compare are accumulated in f64.

/// `(μ, α)` of `values` (`(0, 0)` when empty): the mean and the mean absolute deviation from it.
pub(crate) fn mean_and_scale(values: &[f32]) -> [f32; 2] {
    if values.is_empty() {
        return [0.0, 0.0];
    }
    let n = values.len() as f32;
    let mu = values.iter().sum::<f32>() / n;
    let alpha = values.iter().map(|&v| (v - mu).abs()).sum::<f32>() / n;
    [mu, alpha]
}

/// `sign(v)` with `sign(0) = 0` (`torch.sign`).
#[inline]
fn sign0(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The reference reconstruction of `values` (one row's masked entries) with `order` residual
/// binarizations.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn high_order_residual(values: &[f32], order: usize) -> Vec<f32> {
    let mut r = values.to_vec();
    let mut recon = vec![0f32; values.len()];
    for _ in 0..order {
        let [mu, alpha] = mean_and_scale(&r);
        for (ri, si) in r.iter_mut().zip(recon.iter_mut()) {
            let b = mu + alpha * sign0(*ri - mu);
            *si += b;
            *ri -= b;
        }
    }
    recon
}

/// `Σ (x − high_order_residual(x))²` over `values`, with `scratch` as working memory.
pub(crate) fn residual_error(values: &[f32], order: usize, scratch: &mut Vec<f32>) -> f64 {
    scratch.clear();
    scratch.extend_from_slice(values);
    for _ in 0..order {
        let [mu, alpha] = mean_and_scale(scratch);
        for r in scratch.iter_mut() {
            *r -= mu + alpha * sign0(*r - mu);
        }
    }
    scratch.iter().map(|&r| f64::from(r) * f64::from(r)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_one_is_mean_plus_mean_absolute_deviation() {
        // μ = 3.5, α = mean(|[-2.5, -1.5, 0.5, 3.5]|) = 2.
        let x = [1.0f32, 2.0, 4.0, 7.0];
        assert_eq!(mean_and_scale(&x), [3.5, 2.0]);
        assert_eq!(high_order_residual(&x, 1), [1.5, 1.5, 5.5, 5.5]);
        // An entry exactly at the mean keeps the mean (sign(0) = 0).
        assert_eq!(
            high_order_residual(&[1.0, 2.0, 3.0], 1),
            [2.0 - 2.0 / 3.0, 2.0, 2.0 + 2.0 / 3.0]
        );
        assert!(high_order_residual(&[], 2).is_empty());
    }

    #[test]
    fn order_two_binarizes_the_residual() {
        let x = [1.0f32, 2.0, 4.0, 7.0];
        // First order [1.5, 1.5, 5.5, 5.5]; residual [-0.5, 0.5, -1.5, 1.5]: μ = 0, α = 1;
        // second order [-1, 1, -1, 1].
        let want = [0.5f32, 2.5, 4.5, 6.5];
        assert_eq!(high_order_residual(&x, 2), want);
        let mut scratch = Vec::new();
        let err: f64 = x
            .iter()
            .zip(&want)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        assert_eq!(residual_error(&x, 2, &mut scratch), err);
        // Two values are reproduced exactly by one order; one value by either.
        assert_eq!(residual_error(&[-3.0, 5.0], 1, &mut scratch), 0.0);
        assert_eq!(high_order_residual(&[0.7], 2), [0.7]);
    }
}
