//! Hand-made corrupt safetensors files and directories: every one must be a typed error, and the
//! input file must be left untouched.

use std::collections::BTreeMap;
use std::path::Path;

use qwen3_quant_io::safetensors_file::{parse_header, SafetensorsFile};
use qwen3_quant_io::write::{write_safetensors, TensorData};
use qwen3_quant_io::{Checkpoint, Dtype, IoError};

fn file_with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

fn parse(bytes: &[u8]) -> Result<(), IoError> {
    parse_header(bytes, Path::new("t.safetensors")).map(|_| ())
}

#[test]
fn truncated_files() {
    assert!(matches!(parse(&[]), Err(IoError::Truncated { .. })));
    assert!(matches!(parse(&[1, 0, 0]), Err(IoError::Truncated { .. })));
}

#[test]
fn header_length_beyond_file() {
    let mut v = file_with_header("{}", &[]);
    v[0] = 200;
    assert!(matches!(parse(&v), Err(IoError::HeaderTooLong { .. })));
    let mut v = file_with_header("{}", &[]);
    v[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(parse(&v), Err(IoError::HeaderTooLong { .. })));
}

#[test]
fn garbage_headers() {
    assert!(matches!(
        parse(&file_with_header("{not json", &[])),
        Err(IoError::InvalidHeader { .. })
    ));
    assert!(matches!(
        parse(&file_with_header("[1,2]", &[])),
        Err(IoError::InvalidHeader { .. })
    ));
    let mut bad_utf8 = file_with_header("{}  ", &[]);
    bad_utf8[9] = 0xff;
    assert!(matches!(
        parse(&bad_utf8),
        Err(IoError::InvalidHeader { .. })
    ));
    let h = r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 4])),
        Err(IoError::InvalidHeader { .. })
    ));
    let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 4])),
        Err(IoError::InvalidHeader { .. })
    ));
    let h = r#"{"a":{"shape":[1],"data_offsets":[0,4]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 4])),
        Err(IoError::InvalidHeader { .. })
    ));
}

#[test]
fn offsets_outside_data() {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 4])),
        Err(IoError::InvalidLayout { .. })
    ));
    let h = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 8])),
        Err(IoError::InvalidLayout { .. })
    ));
}

#[test]
fn overlapping_tensors() {
    let h = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 12])),
        Err(IoError::InvalidLayout { .. })
    ));
}

#[test]
fn unknown_dtype_and_length_mismatch() {
    let h = r#"{"a":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,2]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 2])),
        Err(IoError::UnknownDtype { .. })
    ));
    let h = r#"{"a":{"dtype":"BF16","shape":[3],"data_offsets":[0,4]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 4])),
        Err(IoError::InvalidLayout { .. })
    ));
    let h =
        r#"{"a":{"dtype":"BF16","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 4])),
        Err(IoError::InvalidLayout { .. })
    ));
    // A gap between tensors, and bytes after the last one, are refused as well.
    let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 4])),
        Err(IoError::InvalidLayout { .. })
    ));
    let h = r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 4])),
        Err(IoError::InvalidLayout { .. })
    ));
    // A dtype safetensors defines but this crate cannot read.
    let h = r#"{"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}"#;
    assert!(matches!(
        parse(&file_with_header(h, &[0; 2])),
        Err(IoError::UnknownDtype { .. })
    ));
}

#[test]
fn wrong_dtype_missing_tensor_and_nan() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    write_safetensors(
        &p,
        &[
            TensorData::i32("ids", vec![2], &[1, 2]),
            TensorData::f32("w", vec![2], &[1.0, f32::NAN]),
        ],
        &BTreeMap::new(),
    )
    .unwrap();
    let f = SafetensorsFile::open(&p).unwrap();
    assert!(matches!(
        f.tensor("ids").unwrap().to_f32(),
        Err(IoError::WrongDtype { .. })
    ));
    assert!(matches!(f.tensor("nope"), Err(IoError::MissingTensor(_))));
    assert!(matches!(
        f.tensor("w").unwrap().to_f32_finite(),
        Err(IoError::NonFinite { index: 1, .. })
    ));
    assert_eq!(f.tensor("ids").unwrap().to_i64().unwrap(), vec![1, 2]);
}

#[test]
fn writer_output_is_read_by_the_reference_crate_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.safetensors");
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let w: Vec<f32> = (0..6).map(|i| i as f32 * 0.25 - 0.5).collect();
    write_safetensors(
        &p,
        &[
            TensorData::bf16("b", vec![2, 3], &w),
            TensorData::f32("a", vec![3, 2], &w),
        ],
        &meta,
    )
    .unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("a").unwrap().shape(), &[3, 2]);
    let ours = SafetensorsFile::open(&p).unwrap();
    assert_eq!(
        ours.header().metadata.get("format").map(String::as_str),
        Some("pt")
    );
    assert_eq!(ours.tensor("a").unwrap().to_f32().unwrap(), w);
    assert_eq!(ours.tensor("b").unwrap().dtype, Dtype::BF16);
    assert_eq!(ours.tensor("b").unwrap().to_f32().unwrap(), w);
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn writer_rejects_inconsistent_tensors_without_creating_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.safetensors");
    let mut t = TensorData::f32("a", vec![3], &[1.0, 2.0, 3.0]);
    t.shape = vec![4];
    assert!(matches!(
        write_safetensors(&p, &[t], &BTreeMap::new()),
        Err(IoError::InvalidWrite { .. })
    ));
    let dup = vec![
        TensorData::f32("a", vec![1], &[1.0]),
        TensorData::f32("a", vec![1], &[1.0]),
    ];
    assert!(write_safetensors(&p, &dup, &BTreeMap::new()).is_err());
    assert!(!p.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn sharded_checkpoints_and_bad_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_safetensors(
        d.join("s1.safetensors"),
        &[TensorData::f32("a", vec![1], &[1.0])],
        &BTreeMap::new(),
    )
    .unwrap();
    write_safetensors(
        d.join("s2.safetensors"),
        &[TensorData::f32("b", vec![1], &[2.0])],
        &BTreeMap::new(),
    )
    .unwrap();
    let index = r#"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#;
    std::fs::write(d.join("model.safetensors.index.json"), index).unwrap();
    let c = Checkpoint::open(d).unwrap();
    assert_eq!(c.names(), vec!["a", "b"]);
    assert_eq!(c.tensor("b").unwrap().to_f32().unwrap(), vec![2.0]);
    assert!(matches!(
        c.load_f32("a", &[2]),
        Err(IoError::WrongShape { .. })
    ));

    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map":{"a":"s2.safetensors"}}"#,
    )
    .unwrap();
    assert!(matches!(
        Checkpoint::open(d),
        Err(IoError::InvalidIndex { .. })
    ));
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map":{"a":"../s1.safetensors"}}"#,
    )
    .unwrap();
    assert!(matches!(
        Checkpoint::open(d),
        Err(IoError::InvalidIndex { .. })
    ));
    std::fs::write(
        d.join("model.safetensors.index.json"),
        r#"{"weight_map":{"a":"missing.safetensors"}}"#,
    )
    .unwrap();
    assert!(matches!(Checkpoint::open(d), Err(IoError::Io { .. })));
    std::fs::write(d.join("model.safetensors.index.json"), "nope").unwrap();
    assert!(matches!(
        Checkpoint::open(d),
        Err(IoError::InvalidIndex { .. })
    ));
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        Checkpoint::open(empty.path()),
        Err(IoError::NoCheckpoint(_))
    ));
}

#[test]
fn every_truncation_of_a_real_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.safetensors");
    write_safetensors(
        &p,
        &[
            TensorData::f32("a", vec![2, 2], &[1.0, 2.0, 3.0, 4.0]),
            TensorData::i32("b", vec![3], &[1, 2, 3]),
        ],
        &BTreeMap::new(),
    )
    .unwrap();
    let bytes = std::fs::read(&p).unwrap();
    for cut in 0..bytes.len() {
        assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    assert!(parse(&bytes).is_ok());
    // Flipping any single header byte must never panic.
    for i in 0..bytes.len().min(200) {
        let mut b = bytes.clone();
        b[i] ^= 0x5a;
        let _ = parse(&b);
    }
}

#[test]
fn opening_never_modifies_the_input() {
    let Some(micro) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
        return;
    };
    let dir = micro.as_path();
    let path = Path::new(dir).join("model.safetensors");
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let c = Checkpoint::open(dir).unwrap();
    let _ = c.tensor("model.norm.weight").unwrap().to_f32().unwrap();
    drop(c);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before
    );
}

/// The releasing load widens in 8 MB pieces: across a piece boundary it gives the same values
/// as the plain load, the same error at the same index for a NaN past the first piece, and the
/// same typed errors for a wrong shape or dtype; the file is left as it was.
#[test]
fn releasing_load_matches_the_plain_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // bf16 [2500, 2000]: 10 MB of file data, two pieces.
    let (r, c) = (2500, 2000);
    let vals: Vec<f32> = (0..r * c)
        .map(|i| ((i % 977) as f32 - 488.0) / 61.0)
        .collect();
    let mut bad = vals.clone();
    let nan_at = 4_500_000;
    bad[nan_at] = f32::NAN;
    let path = d.join("model.safetensors");
    write_safetensors(
        &path,
        &[
            TensorData::bf16("w", vec![r, c], &vals),
            TensorData::bf16("bad", vec![r, c], &bad),
            TensorData::i32("ints", vec![2], &[1, 2]),
        ],
        &BTreeMap::new(),
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let ck = Checkpoint::open(d).unwrap();
    let plain = ck.load_f32("w", &[r, c]).unwrap();
    assert_eq!(ck.load_f32_releasing("w", &[r, c]).unwrap(), plain);
    // Read again after its pages were released: the same values come back from the file.
    assert_eq!(ck.load_f32_releasing("w", &[r, c]).unwrap(), plain);
    assert!(matches!(
        ck.load_f32_releasing("bad", &[r, c]),
        Err(IoError::NonFinite { index, .. }) if index == nan_at
    ));
    assert!(matches!(
        ck.load_f32_releasing("w", &[c, r]),
        Err(IoError::WrongShape { .. })
    ));
    assert!(matches!(
        ck.load_f32_releasing("ints", &[2]),
        Err(IoError::WrongDtype { .. })
    ));
    drop(ck);
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
