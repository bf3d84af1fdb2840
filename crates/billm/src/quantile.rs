//! `numpy.quantile(values, q)` with the default `method="linear"`, on sorted values.

/// The `q`-quantile of `sorted` (ascending, non-empty) as numpy computes it: virtual index
/// `h = (n − 1)·q`, `a = v[⌊h⌋]`, `b = v[⌊h⌋ + 1]` (clipped), `t = h − ⌊h⌋`, then numpy's
/// `_lerp`: `a + (b − a)·t` for `t < 0.5`, `b − (b − a)·(1 − t)` otherwise (exact at both
/// ends). Computed in f64 (the reference runs numpy on float32 inputs). `None` when empty.
pub(crate) fn quantile_linear(sorted: &[f32], q: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let h = (n - 1) as f64 * q.clamp(0.0, 1.0);
    let lo = (h.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let t = h - lo as f64;
    let (a, b) = (f64::from(sorted[lo]), f64::from(sorted[hi]));
    let diff = b - a;
    Some(if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values numpy 2.x prints for `np.quantile(v, q)`.
    #[test]
    fn matches_numpy_linear() {
        let v = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(quantile_linear(&v, 0.5), Some(2.5));
        assert_eq!(quantile_linear(&v, 0.0), Some(1.0));
        assert_eq!(quantile_linear(&v, 1.0), Some(4.0));
        // h = 3·0.1 = 0.3 → 1 + 0.3·(3 − 1) on [1, 3, 7, 15]: 1.6.
        let w = [1.0f32, 3.0, 7.0, 15.0];
        assert!((quantile_linear(&w, 0.1).unwrap() - 1.6).abs() < 1e-12);
        // h = 3·0.9 = 2.7 → t ≥ 0.5: 15 − 8·0.3 = 12.6.
        assert!((quantile_linear(&w, 0.9).unwrap() - 12.6).abs() < 1e-12);
        // Zeros count like any value: np.quantile([0, 0, 0, 1, 2], 0.5) = 0, 0.75 → 1.
        let z = [0.0f32, 0.0, 0.0, 1.0, 2.0];
        assert_eq!(quantile_linear(&z, 0.5), Some(0.0));
        assert_eq!(quantile_linear(&z, 0.75), Some(1.0));
        assert!((quantile_linear(&z, 0.6).unwrap() - 0.4).abs() < 1e-12);
        assert_eq!(quantile_linear(&[5.0], 0.3), Some(5.0));
        assert_eq!(quantile_linear(&[], 0.3), None);
    }
}
