//! Truncated, inconsistent and lying checkpoints are typed errors (never a panic); writes are
//! atomic and never touch the input directory; v2 zeros declared as v1 are detected.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use qwen3_quant_calib::{quantize_checkpoint, DriverOptions};
use qwen3_quant_core::{Bits, GroupSize, QuantScheme, RangeConvention};
use qwen3_quant_formats::{
    load_model, write_checkpoint, Format, FormatError, GptqZeros, LoadOptions, WriteOptions,
};
use qwen3_quant_io::write::{write_safetensors, TensorData};
use qwen3_quant_io::{Checkpoint, IoError};
use qwen3_quant_rtn::{Rtn, RtnConfig};
use serde_json::Value;

const GPTQMODEL: &str = "qwen3-micro-gptq-w4g128-actorder";
const Q: &str = "model.layers.0.self_attn.q_proj";

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        let mut p = std::fs::metadata(dst.join(e.file_name()))
            .unwrap()
            .permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        p.set_readonly(false);
        std::fs::set_permissions(dst.join(e.file_name()), p).unwrap();
    }
}

/// A copy of the GPTQModel checkpoint with tensor `name` replaced by `f(old)`.
fn with_tensor(tmp: &Path, tag: &str, name: &str, f: impl Fn(TensorData) -> TensorData) -> PathBuf {
    let dir = tmp.join(tag);
    copy_dir(&model_dir(GPTQMODEL), &dir);
    let file = dir.join("model.safetensors");
    let tensors: Vec<TensorData> = {
        let ckpt = Checkpoint::open(&dir).unwrap();
        ckpt.names()
            .iter()
            .map(|n| {
                let t = ckpt.tensor(n).unwrap();
                let d = TensorData {
                    name: n.to_string(),
                    dtype: t.dtype,
                    shape: t.shape.to_vec(),
                    bytes: t.data.to_vec(),
                };
                if *n == name {
                    f(d)
                } else {
                    d
                }
            })
            .collect()
    };
    write_safetensors(&file, &tensors, &BTreeMap::new()).unwrap();
    dir
}

fn with_config(tmp: &Path, tag: &str, edit: impl Fn(&mut Value)) -> PathBuf {
    let dir = tmp.join(tag);
    copy_dir(&model_dir(GPTQMODEL), &dir);
    for name in ["config.json", "quantize_config.json"] {
        let p = dir.join(name);
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        match v.get_mut("quantization_config") {
            Some(q) => edit(q),
            None => edit(&mut v),
        }
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Result<(), FormatError> {
    load_model(dir, &LoadOptions::default()).map(|_| ())
}

#[test]
fn lying_gptq_files_are_typed_errors() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro-gptq-w4g128-actorder") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // scales with the wrong number of groups.
    let d = with_tensor(t, "scales", &format!("{Q}.scales"), |mut x| {
        x.shape = vec![2, 1024];
        x
    });
    assert!(
        matches!(load(&d), Err(FormatError::Inconsistent { .. })),
        "{:?}",
        load(&d)
    );
    // qzeros with the wrong width.
    let d = with_tensor(t, "qzeros", &format!("{Q}.qzeros"), |mut x| {
        x.shape = vec![8, 32];
        x
    });
    assert!(matches!(load(&d), Err(FormatError::Inconsistent { .. })));
    // g_idx out of range, and negative.
    for (tag, v) in [("gidx-high", 99i32), ("gidx-neg", -1)] {
        let d = with_tensor(t, tag, &format!("{Q}.g_idx"), |mut x| {
            x.bytes[20..24].copy_from_slice(&v.to_le_bytes());
            x
        });
        assert!(
            matches!(load(&d), Err(FormatError::GIdxOutOfRange { column: 5, .. })),
            "{:?}",
            load(&d)
        );
    }
    // qweight of another dtype.
    let d = with_tensor(t, "dtype", &format!("{Q}.qweight"), |mut x| {
        x.dtype = qwen3_quant_io::Dtype::F32;
        x
    });
    assert!(matches!(load(&d), Err(FormatError::Inconsistent { .. })));
    // Unknown and lying bit widths.
    let d = with_config(t, "bits5", |q| q["bits"] = 5.into());
    assert!(
        matches!(load(&d), Err(FormatError::UnsupportedBits { bits: 5, .. })),
        "{:?}",
        load(&d)
    );
    let d = with_config(t, "bits9", |q| q["bits"] = 9.into());
    assert!(matches!(load(&d), Err(FormatError::UnsupportedBits { .. })));
    let d = with_config(t, "bits8", |q| q["bits"] = 8.into());
    match load(&d) {
        Err(FormatError::Inconsistent { reason, .. }) => {
            assert!(reason.contains("4-bit"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let d = with_config(t, "method", |q| q["quant_method"] = "fp8".into());
    assert!(matches!(load(&d), Err(FormatError::Config(_))));
    let d = with_config(t, "pack", |q| q["pack_dtype"] = "int16".into());
    assert!(matches!(load(&d), Err(FormatError::Config(_))));
    // Truncated and missing shards.
    let d = with_config(t, "trunc", |_| {});
    let f = d.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    assert!(
        matches!(
            load(&d),
            Err(FormatError::Io(IoError::InvalidLayout { .. }))
        ),
        "{:?}",
        load(&d)
    );
    std::fs::remove_file(&f).unwrap();
    assert!(matches!(
        load(&d),
        Err(FormatError::Io(IoError::NoCheckpoint(_)))
    ));
}

fn rtn4(
    src: &Path,
) -> (
    qwen3_quant_model::Qwen3Model,
    qwen3_quant_calib::QuantizationRun,
) {
    let scheme = QuantScheme::new(
        Bits::B4,
        GroupSize::group(128).unwrap(),
        false,
        RangeConvention::Awq,
    )
    .unwrap();
    let ckpt = Checkpoint::open(src).unwrap();
    quantize_checkpoint(
        &ckpt,
        None,
        &Rtn::new(RtnConfig::new(scheme)).unwrap(),
        &DriverOptions::default(),
    )
    .unwrap()
}

fn snapshot(dir: &Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn v2_zeros_declared_as_v1_are_detected_and_writes_are_atomic() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_dir(&model_dir("qwen3-micro"), &src);
    let before = snapshot(&src);
    let (model, run) = rtn4(&src);

    // A v2 file, correctly declared, loads; relabelled as v1 it is refused with the evidence.
    let v2 = tmp.path().join("v2");
    let opts = WriteOptions::new(Format::Gptq).with_gptq_zeros(Some(GptqZeros::V2));
    write_checkpoint(&v2, &src, &model, &run.quantized, &opts).unwrap();
    let good = load_model(&v2, &LoadOptions::default()).unwrap();
    for name in ["config.json", "quantize_config.json"] {
        let p = v2.join(name);
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("\"gptq_v2\"", "\"gptq\"");
        std::fs::write(&p, text).unwrap();
    }
    match load_model(&v2, &LoadOptions::default()) {
        Err(FormatError::MislabeledZeros {
            declared: "gptq",
            detected: "gptq_v2",
            mean_declared,
            mean_other,
        }) => {
            assert!(
                mean_declared.abs() > 0.7 && mean_other.abs() < 0.3,
                "{mean_declared} {mean_other}"
            );
        }
        other => panic!("{other:?}"),
    }
    let forced = load_model(
        &v2,
        &LoadOptions::default().with_gptq_zeros(Some(GptqZeros::V2)),
    )
    .unwrap();
    let valid = docs("valid");
    assert_eq!(
        ppl(&forced.model, &valid, 1, 256),
        ppl(&good.model, &valid, 1, 256)
    );

    // An existing non-empty output is refused and left as it was; so is an output inside the source.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let e = write_checkpoint(
        &out,
        &src,
        &model,
        &run.quantized,
        &WriteOptions::new(Format::Native),
    );
    assert!(matches!(e, Err(FormatError::Output { .. })), "{e:?}");
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
    let e = write_checkpoint(
        &src.join("q"),
        &src,
        &model,
        &run.quantized,
        &WriteOptions::new(Format::Native),
    );
    assert!(matches!(e, Err(FormatError::Output { .. })));
    // With overwrite the old content is replaced as a whole.
    let opts = WriteOptions::new(Format::Native).with_overwrite(true);
    write_checkpoint(&out, &src, &model, &run.quantized, &opts).unwrap();
    assert!(!out.join("keep.txt").exists() && out.join("model.safetensors").is_file());
    // A write that fails half-way (a scale beyond f16 in the last linear) leaves nothing behind:
    // no output and no temporary directory.
    let mut bad = run.quantized.clone();
    let (id, q) = bad.pop().unwrap();
    let a = q.as_affine().unwrap();
    let mut scales = a.scales().to_vec();
    scales[0] = 1e6;
    let huge = qwen3_quant_core::QuantizedLinear::new(
        a.out_features(),
        a.in_features(),
        a.bits(),
        a.group_size(),
        a.sym(),
        a.codes().to_vec(),
        scales,
        a.zeros().to_vec(),
        a.g_idx().to_vec(),
        None,
    )
    .unwrap();
    bad.push((id, huge.into()));
    let failed = tmp.path().join("failed");
    let e = write_checkpoint(
        &failed,
        &src,
        &model,
        &bad,
        &WriteOptions::new(Format::Gptq),
    );
    assert!(matches!(e, Err(FormatError::Inconsistent { .. })), "{e:?}");
    assert!(!failed.exists());
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    // The input directory is exactly as it was.
    assert_eq!(snapshot(&src), before);
}

#[test]
fn native_files_from_the_future_are_refused() {
    let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let src = model_dir("qwen3-micro");
    let (model, run) = rtn4(&src);
    let out = tmp.path().join("n");
    write_checkpoint(
        &out,
        &src,
        &model,
        &run.quantized,
        &WriteOptions::new(Format::Native),
    )
    .unwrap();
    let p = out.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["quantization_config"]["format_version"] = 99.into();
    std::fs::write(&p, v.to_string()).unwrap();
    assert!(matches!(load(&out), Err(FormatError::Config(_))));
}
