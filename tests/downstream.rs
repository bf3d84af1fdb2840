//! The downstream-crate test: `tests/downstream/src/main.rs`, a program outside the workspace
//! that depends on the facade alone, is compiled against this build's `qwen3-quant` library
//! (only `--extern qwen3_quant`, so it cannot name any other crate) and run.
//!
//! Compiling it with `rustc` against the libraries `cargo test` has just built costs seconds;
//! `cargo run --manifest-path tests/downstream/Cargo.toml` (the ignored test below) rebuilds
//! every dependency from scratch instead.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// `target/<profile>/deps`, where this test binary and the facade's rlib live.
fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

/// The facade's rlibs in `deps`, newest first.
fn facade_rlibs(deps: &Path) -> Vec<PathBuf> {
    let mut libs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(deps)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("libqwen3_quant-") && n.ends_with(".rlib")
        })
        .map(|e| (e.metadata().unwrap().modified().unwrap(), e.path()))
        .collect();
    libs.sort_by_key(|l| std::cmp::Reverse(l.0));
    libs.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn a_downstream_crate_uses_the_facade_alone() {
    let Some(micro) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let deps = deps_dir();
    let rlibs = facade_rlibs(&deps);
    assert!(
        !rlibs.is_empty(),
        "no libqwen3_quant-*.rlib in {}",
        deps.display()
    );
    let out = tempfile::tempdir().unwrap();
    let exe = out.path().join("qwen3-quant-downstream");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut errors = Vec::new();
    // Stale rlibs of older builds may linger; the newest one that links is this build's.
    let built = rlibs.iter().any(|rlib| {
        let o = Command::new(&rustc)
            .args(["--edition", "2021", "--crate-type", "bin", "--crate-name"])
            .arg("qwen3_quant_downstream")
            .arg(format!("{ROOT}/tests/downstream/src/main.rs"))
            .arg("-o")
            .arg(&exe)
            .arg("-L")
            .arg(format!("dependency={}", deps.display()))
            .arg("--extern")
            .arg(format!("qwen3_quant={}", rlib.display()))
            .args(["-C", "debuginfo=0"])
            .env("CARGO_MANIFEST_DIR", format!("{ROOT}/tests/downstream"))
            .output()
            .unwrap();
        if !o.status.success() {
            errors.push(String::from_utf8_lossy(&o.stderr).into_owned());
        }
        o.status.success()
    });
    assert!(
        built,
        "the downstream crate does not compile:\n{}",
        errors.join("\n")
    );
    let run = Command::new(&exe)
        .arg(&micro)
        .arg(out.path().join("checkpoint"))
        // The README example opens `assets/models/qwen3-micro` relative to the current folder.
        .current_dir(micro.join("../../.."))
        .env("QWEN3_QUANT_DATA", micro.join("../../data"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success()
            && stdout.starts_with("docs ppl ") // the README example's first line
            && stdout.lines().any(|l| l.starts_with("ok ")),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    eprintln!("{stdout}");
}

/// The README's example is the one `tests/downstream/src/readme.rs` runs: the lines between the
/// README's `readme-example` markers are the body of `readme::run`.
#[test]
fn the_downstream_crate_runs_the_readme_example() {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let start = readme
        .find("<!-- readme-example: start")
        .expect("no start marker");
    let end = readme
        .find("<!-- readme-example: end")
        .expect("no end marker");
    let block: Vec<&str> = readme[start..end]
        .lines()
        .skip_while(|l| !l.starts_with("```rust"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    let rs = std::fs::read_to_string(format!("{ROOT}/tests/downstream/src/readme.rs")).unwrap();
    let body: Vec<&str> = rs
        .lines()
        .skip_while(|l| !l.starts_with("pub fn run()"))
        .skip(1)
        .take_while(|l| *l != "    Ok(())")
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    assert!(block.len() >= 10, "{block:?}");
    assert_eq!(
        block, body,
        "README example and tests/downstream/src/readme.rs differ"
    );
}

/// The same program as its own cargo project (a complete build of every dependency: minutes).
#[test]
#[ignore = "builds every dependency from scratch; run with --ignored"]
fn the_downstream_project_builds_with_cargo() {
    // Resolve with the versions the workspace is tested with (cargo prunes what it does not use);
    // without a lockfile, `--offline` would pick the newest compatible versions, which may not
    // be in the local cache.
    let lock = format!("{ROOT}/tests/downstream/Cargo.lock");
    if !Path::new(&lock).exists() {
        std::fs::copy(format!("{ROOT}/Cargo.lock"), &lock).unwrap();
    }
    let target = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["run", "--release", "--offline", "--manifest-path"])
        .arg(format!("{ROOT}/tests/downstream/Cargo.toml"))
        .env("CARGO_TARGET_DIR", target.path())
        .status()
        .unwrap();
    assert!(status.success());
}
