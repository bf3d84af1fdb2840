//! Replays the fuzz targets' corpora (`fuzz/corpus/<target>/`, seeds written by
//! `scripts/make_fuzz_corpus.py` plus anything `cargo fuzz` adds there) through the same
//! properties the targets check, so every input the fuzzer ever kept stays a regression test.

use std::path::PathBuf;

/// The corpus of `target`, or `None` (with the reason printed) outside the repository, e.g. in
/// the packaged crate; `QWEN3_QUANT_REQUIRE_ASSETS=1` (set by CI) turns the skip into a failure.
fn corpus(target: &str) -> Option<Vec<(PathBuf, Vec<u8>)>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        let reason = format!("no fuzz corpus at {}", dir.display());
        if std::env::var_os("QWEN3_QUANT_REQUIRE_ASSETS").is_some_and(|v| v == "1") {
            panic!("{reason} (QWEN3_QUANT_REQUIRE_ASSETS=1)");
        }
        println!("skipped: {reason}");
        return None;
    };
    let mut files: Vec<(PathBuf, Vec<u8>)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    Some(files)
}

fn replay(target: &str, check: fn(&[u8]), min_files: usize) {
    let Some(files) = corpus(target) else {
        return;
    };
    assert!(
        files.len() >= min_files,
        "{target}: {} corpus files, expected at least {min_files}",
        files.len()
    );
    for (path, bytes) in &files {
        let r = std::panic::catch_unwind(|| check(bytes));
        assert!(
            r.is_ok(),
            "{target}: {} breaks the property",
            path.display()
        );
    }
}

#[test]
fn config_json_corpus_replays() {
    replay(
        "config_json",
        qwen3_quant_io::fuzzing::check_config_json,
        20,
    );
}

#[test]
fn safetensors_header_corpus_replays() {
    replay(
        "safetensors_header",
        qwen3_quant_io::fuzzing::check_safetensors,
        20,
    );
}

/// The seeds include valid inputs: the replay really parses some files, not only rejects them.
#[test]
fn the_corpora_hold_valid_inputs_too() {
    if let Some(files) = corpus("safetensors_header") {
        let ok = files
            .iter()
            .filter(|(_, b)| qwen3_quant_io::SafetensorsFile::from_bytes(b.clone(), "x").is_ok())
            .count();
        assert!(ok >= 2, "only {ok} valid safetensors seeds");
    }
    if let Some(files) = corpus("config_json") {
        let ok = files
            .iter()
            .filter_map(|(_, b)| std::str::from_utf8(b).ok())
            .filter(|t| qwen3_quant_io::ModelConfig::from_json(t).is_ok())
            .count();
        assert!(ok >= 3, "only {ok} valid config seeds");
    }
}
