//! Where the evaluation and calibration data live.
//!
//! The data folder has the layout of the repository's `assets/data` (`docs/`, `wikitext2/`,
//! `c4/`, `tasks/`). [`find_data_dir`] looks, in order, at:
//!
//! 1. the folder given explicitly (the CLI's `--data-dir`),
//! 2. the environment variable [`DATA_ENV`] (`QWEN3_QUANT_DATA`),
//! 3. the `assets/data` of the source tree this crate was built from, if it still exists,
//! 4. `<folder of the executable>/../share/qwen3-quant/data` and `<folder of the executable>/data`
//!    (an installed layout).
//!
//! The command-line binary adds a last fallback: the small sets (docs, WikiText-2, the C4
//! sample) embedded in it and unpacked into a cache folder.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The environment variable that names the data folder.
pub const DATA_ENV: &str = "QWEN3_QUANT_DATA";

/// The `assets/data` folder of the source tree this crate was compiled from (it may no longer
/// exist once the binary is installed elsewhere).
///
/// ```
/// assert!(qwen3_quant::data::source_data_dir().ends_with("assets/data"));
/// ```
pub fn source_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/data")
}

/// The places [`find_data_dir`] looks at after the explicit folder and [`DATA_ENV`], in order.
///
/// ```
/// let c = qwen3_quant::data::installed_candidates();
/// assert_eq!(c[0], qwen3_quant::data::source_data_dir());
/// ```
pub fn installed_candidates() -> Vec<PathBuf> {
    let mut v = vec![source_data_dir()];
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        v.push(bin.join("../share/qwen3-quant/data"));
        v.push(bin.join("data"));
    }
    v
}

/// Whether `dir` looks like a data folder (it has at least one of the known subfolders).
///
/// ```
/// # let Some(_) = qwen3_quant::io::assets::require("data") else { return; };
/// assert!(qwen3_quant::data::is_data_dir(&qwen3_quant::data::source_data_dir()));
/// assert!(!qwen3_quant::data::is_data_dir(std::path::Path::new("/")));
/// ```
pub fn is_data_dir(dir: &Path) -> bool {
    ["docs", "wikitext2", "c4", "tasks"]
        .iter()
        .any(|s| dir.join(s).is_dir())
}

/// The data folder (see the module docs for the search order).
///
/// # Errors
/// [`Error::InvalidInput`] when an explicit or [`DATA_ENV`] folder does not exist, or when no
/// candidate holds the data.
///
/// ```
/// let dir = qwen3_quant::data::find_data_dir(None)?;
/// assert!(dir.join("docs/docs.tokens.safetensors").is_file());
/// assert!(qwen3_quant::data::find_data_dir(Some("/no/such/dir".as_ref())).is_err());
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
pub fn find_data_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = explicit {
        return checked(d, "the data folder");
    }
    if let Some(d) = std::env::var_os(DATA_ENV).filter(|v| !v.is_empty()) {
        return checked(Path::new(&d), DATA_ENV);
    }
    installed_candidates()
        .into_iter()
        .find(|d| is_data_dir(d))
        .ok_or_else(|| {
            Error::invalid(format!(
                "no evaluation data found: pass --data-dir DIR or set {DATA_ENV}=DIR to a folder \
                 laid out like the repository's assets/data"
            ))
        })
}

fn checked(d: &Path, what: &str) -> Result<PathBuf> {
    if d.is_dir() {
        Ok(d.to_path_buf())
    } else {
        Err(Error::invalid(format!(
            "{what} {} is not a folder",
            d.display()
        )))
    }
}
