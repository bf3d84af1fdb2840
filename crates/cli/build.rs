//! The `embedded-data` feature embeds the repository's small data sets (`assets/data`) in the
//! binary. A build from the published crate has no `assets/` folder: there the feature embeds
//! nothing (with a build warning) instead of failing, and the binary looks for a data folder
//! (`--data-dir`, `QWEN3_QUANT_DATA`) as without the feature. With `QWEN3_QUANT_REQUIRE_ASSETS=1`
//! (CI) missing data is a build error.

use std::path::Path;

/// The embedded files, relative to `assets/data`; `src/data_dir.rs` includes the same list.
const FILES: &[&str] = &[
    "docs/docs.tokens.safetensors",
    "wikitext2/wikitext-2-raw-v1.test.jsonl",
    "wikitext2/wikitext-2-raw-v1.validation.jsonl",
    "wikitext2/wiki.test.raw",
    "c4/c4-en-validation-subset-2k.yxanul.jsonl.gz",
];

fn main() {
    println!("cargo:rustc-check-cfg=cfg(qwen3_embedded_data)");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_EMBEDDED_DATA").is_none() {
        return;
    }
    let data = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../assets/data");
    let missing: Vec<&str> = FILES
        .iter()
        .copied()
        .filter(|f| !data.join(f).is_file())
        .collect();
    for f in FILES {
        println!("cargo:rerun-if-changed={}", data.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=QWEN3_QUANT_REQUIRE_ASSETS");
    if missing.is_empty() {
        println!("cargo:rustc-cfg=qwen3_embedded_data");
    } else if std::env::var("QWEN3_QUANT_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!(
            "embedded-data: {} not found and QWEN3_QUANT_REQUIRE_ASSETS=1",
            data.join(missing[0]).display()
        );
    } else {
        println!(
            "cargo:warning=embedded-data: {} not found (a build outside the repository); \
             the binary embeds no data sets: pass --data-dir or set QWEN3_QUANT_DATA",
            data.join(missing[0]).display()
        );
    }
}
