//! A forward that reports every linear input to an observer (how calibration sees the model)
//! computes the same hidden states as the fused forward without one, and what it reports is
//! consistent with the layer's own linears.
use qwen3_quant_model::observer::{NoObserver, Observer, Site};
use qwen3_quant_model::Qwen3Model;

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");

struct Everything(Vec<(Site, Vec<f32>)>);

impl Observer for Everything {
    fn observe(&mut self, _: usize, site: Site, x: &[f32], _: usize, _: usize) {
        self.0.push((site, x.to_vec()));
    }
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check(dir: &str) {
    let model = Qwen3Model::load(format!("{ASSETS}/models/{dir}")).unwrap();
    let (batch, seq) = (2, 96);
    let rope = model.rope(seq);
    let ids: Vec<u32> = (0..batch * seq)
        .map(|i| ((i * 7919 + 11) % 8000) as u32)
        .collect();
    let mut plain = model.embed(&ids).unwrap();
    let mut seen = plain.clone();
    for layer in &model.layers {
        layer
            .forward(&mut plain, batch, seq, &rope, &mut NoObserver)
            .unwrap();
        let mut obs = Everything(Vec::new());
        layer
            .forward(&mut seen, batch, seq, &rope, &mut obs)
            .unwrap();
        let sites: Vec<Site> = obs.0.iter().map(|(s, _)| *s).collect();
        assert!(
            sites.contains(&Site::AttnInput) && sites.contains(&Site::OInput),
            "{sites:?}"
        );
        let d = max_rel(&seen, &plain);
        assert!(
            d < 1e-5,
            "{dir} layer {}: observed forward differs by {d}",
            layer.index
        );
    }
}

#[test]
fn observed_forward_equals_fused_forward_dense() {
    check("qwen3-micro");
}

#[test]
fn observed_forward_equals_fused_forward_moe() {
    check("qwen3-moe-micro");
}
