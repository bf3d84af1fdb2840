//! Where the repository's bundled models, goldens and data sets (`assets/`) are, for tests and
//! examples.
//!
//! The published crates do not ship `assets/` (hundreds of megabytes). Tests and examples that
//! need it call [`require`], which looks at
//!
//! 1. the environment variable [`ASSETS_ENV`] (`QWEN3_QUANT_ASSETS`), a folder laid out like the
//!    repository's `assets/`;
//! 2. the `assets/` folder of the workspace this crate was built in (`CARGO_MANIFEST_DIR/../..`),
//!    when it exists.
//!
//! When the asset is in neither place, [`require`] prints `skipped: <test>: <reason>` and returns
//! `None` (the test returns early and passes), unless [`REQUIRE_ENV`]
//! (`QWEN3_QUANT_REQUIRE_ASSETS=1`, set by the repository's CI) is set: then it panics, so a
//! workspace test can never be skipped silently.
//!
//! ```
//! // A test that needs the bundled model.
//! let Some(dir) = qwen3_quant_io::assets::require("models/qwen3-micro") else { return };
//! assert!(dir.join("config.json").is_file());
//! ```

use std::path::{Path, PathBuf};

/// The environment variable naming an assets folder (the layout of the repository's `assets/`).
pub const ASSETS_ENV: &str = "QWEN3_QUANT_ASSETS";

/// The environment variable that turns a missing asset into a panic instead of a skip (`1`).
pub const REQUIRE_ENV: &str = "QWEN3_QUANT_REQUIRE_ASSETS";

/// The `assets/` folder of the workspace this crate was compiled in (it does not exist when the
/// crate comes from a registry).
///
/// ```
/// assert!(qwen3_quant_io::assets::workspace_dir().ends_with("assets"));
/// ```
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets")
}

/// The assets folder: [`ASSETS_ENV`] if it is set and not empty, otherwise [`workspace_dir`] if
/// it exists.
pub fn dir() -> Option<PathBuf> {
    match std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => Some(workspace_dir()).filter(|d| d.is_dir()),
    }
}

/// `rel` (a path inside the assets folder, such as `models/qwen3-micro` or
/// `golden/reference_ppl.json`) if it exists.
pub fn find(rel: &str) -> Option<PathBuf> {
    dir().map(|d| d.join(rel)).filter(|p| p.exists())
}

/// `rel` inside the assets folder, or, when it is missing, `None` after printing
/// `skipped: <test>: <reason>` on stderr.
///
/// # Panics
///
/// When the asset is missing and [`REQUIRE_ENV`] is `1`.
pub fn require(rel: &str) -> Option<PathBuf> {
    if let Some(p) = find(rel) {
        return Some(p);
    }
    let reason = match std::env::var_os(ASSETS_ENV).filter(|v| !v.is_empty()) {
        Some(d) => format!("{rel} is not in {ASSETS_ENV}={}", Path::new(&d).display()),
        None => format!(
            "{rel} not found: no {} (set {ASSETS_ENV} to a copy of the repository's assets/)",
            workspace_dir().join(rel).display()
        ),
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("test");
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test}: {reason} and {REQUIRE_ENV}=1");
    }
    eprintln!("skipped: {test}: {reason}");
    None
}

/// The assets folder ([`dir`], or [`workspace_dir`] when there is none) as a displayable value,
/// so that tests can keep writing paths as `format!("{ASSETS}/models/qwen3-micro")` with
/// `const ASSETS: Folder = Folder;`. The folder is looked up each time it is displayed.
///
/// ```
/// use qwen3_quant_io::assets::Folder;
/// assert!(format!("{Folder}/models").ends_with("/models"));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Folder;

impl std::fmt::Display for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = dir().unwrap_or_else(workspace_dir);
        write!(f, "{}", d.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_asset_is_skipped_or_panics_when_required() {
        let required = std::env::var(REQUIRE_ENV).as_deref() == Ok("1");
        assert!(find("no/such/asset").is_none());
        match std::panic::catch_unwind(|| require("no/such/asset")) {
            Ok(found) => assert!(!required && found.is_none()),
            Err(_) => assert!(required),
        }
    }

    #[test]
    fn the_bundled_model_is_found_in_the_workspace() {
        let Some(micro) = require("models/qwen3-micro") else {
            return;
        };
        assert!(micro.join("config.json").is_file());
    }
}
