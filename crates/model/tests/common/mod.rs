//! Helpers shared by the model crate's equivalence tests.

/// `max |a − b| / max |a|`: how far `b` is from `a`, relative to `a`'s largest magnitude.
pub fn rel_max_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = a
        .iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    d / scale
}
