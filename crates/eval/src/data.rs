//! Small file readers shared by the dataset, task and MMLU loaders.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::EvalError;

/// The repository's bundled evaluation data folder (`<repo>/assets/data`), resolved from this
/// crate's source location at compile time. Binaries installed elsewhere should pass their own path.
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/data")
}

/// Reads a whole file as UTF-8, transparently gunzipping `*.gz`.
pub fn read_text(path: &Path) -> Result<String, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| EvalError::io(path, e))?;
        out
    } else {
        bytes
    };
    String::from_utf8(bytes).map_err(|e| EvalError::parse(path, format!("not UTF-8: {e}")))
}

/// Parses a JSON-lines file (optionally gzipped); blank lines are skipped.
pub fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>, EvalError> {
    let text = read_text(path)?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| EvalError::parse(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// `row[field]` as a string.
pub(crate) fn str_field<'a>(
    row: &'a serde_json::Value,
    field: &str,
    path: &Path,
) -> Result<&'a str, EvalError> {
    row.get(field)
        .and_then(|v| v.as_str())
        .ok_or_else(|| EvalError::parse(path, format!("missing string field {field:?}")))
}

/// Python's `str.isspace` for one character (Rust's `char::is_whitespace` plus U+001C..U+001F).
pub(crate) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(py_isspace)
}

/// Reads an i32 tensor of a safetensors file as token ids.
pub fn read_token_tensor(path: &Path, name: &str) -> Result<Vec<u32>, EvalError> {
    let bytes = std::fs::read(path).map_err(|e| EvalError::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| EvalError::parse(path, e.to_string()))?;
    let t = st
        .tensor(name)
        .map_err(|e| EvalError::parse(path, format!("tensor {name:?}: {e}")))?;
    let data = t.data();
    let ids: Vec<i64> = match t.dtype() {
        safetensors::Dtype::I32 => data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        safetensors::Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        safetensors::Dtype::U32 => data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        d => {
            return Err(EvalError::parse(
                path,
                format!("tensor {name:?} has dtype {d:?}, expected an integer type"),
            ))
        }
    };
    ids.into_iter()
        .map(|x| {
            u32::try_from(x)
                .map_err(|_| EvalError::parse(path, format!("negative/oversized token id {x}")))
        })
        .collect()
}
