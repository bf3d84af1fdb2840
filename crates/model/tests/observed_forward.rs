//! A forward that reports every linear input to an observer (how calibration sees the model)
//! computes the same hidden states as the fused forward without one, and what it reports is
//! consistent with the layer's own linears.
use qwen3_quant_model::observer::{NoObserver, Observer, Site};
use qwen3_quant_model::Qwen3Model;

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
const ASSETS: qwen3_quant_io::assets::Folder = qwen3_quant_io::assets::Folder;

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
        // MoE: every expert also sees every token (statistics only), and the output above
        // must still be the routed one.
        for (s, x) in &obs.0 {
            if let Site::ExpertInputAll(_) = s {
                assert_eq!(x.len(), batch * seq * model.config.hidden_size, "{s:?}");
            }
        }
        if dir.contains("moe") {
            assert!(sites.contains(&Site::ExpertInputAll(0)), "{sites:?}");
            assert!(sites.contains(&Site::ExpertDownInputAll(0)), "{sites:?}");
        }
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
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    check("qwen3-micro");
}

#[test]
fn observed_forward_equals_fused_forward_moe() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-moe-micro") else {
        return;
    };
    check("qwen3-moe-micro");
}
