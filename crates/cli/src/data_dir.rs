//! Finding the evaluation data: `--data-dir` / `QWEN3_QUANT_DATA`, the source tree or an
//! installed `share/qwen3-quant/data` (see `qwen3_quant::data`), and last the small sets embedded
//! in this binary, unpacked once into a cache folder.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The embedded files, as paths relative to the data folder.
#[cfg(qwen3_embedded_data)]
const EMBEDDED: &[(&str, &[u8])] = &[
    (
        "docs/docs.tokens.safetensors",
        include_bytes!("../../../assets/data/docs/docs.tokens.safetensors"),
    ),
    (
        "wikitext2/wikitext-2-raw-v1.test.jsonl",
        include_bytes!("../../../assets/data/wikitext2/wikitext-2-raw-v1.test.jsonl"),
    ),
    (
        "wikitext2/wikitext-2-raw-v1.validation.jsonl",
        include_bytes!("../../../assets/data/wikitext2/wikitext-2-raw-v1.validation.jsonl"),
    ),
    (
        "wikitext2/wiki.test.raw",
        include_bytes!("../../../assets/data/wikitext2/wiki.test.raw"),
    ),
    (
        "c4/c4-en-validation-subset-2k.yxanul.jsonl.gz",
        include_bytes!("../../../assets/data/c4/c4-en-validation-subset-2k.yxanul.jsonl.gz"),
    ),
];

#[cfg(not(qwen3_embedded_data))]
const EMBEDDED: &[(&str, &[u8])] = &[];

/// Marker written last: a folder without it is incomplete and is unpacked again.
const COMPLETE: &str = ".complete";

/// The data folder for a command.
pub fn data_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match qwen3_quant::data::find_data_dir(explicit) {
        Ok(d) => Ok(d),
        Err(e) if explicit.is_some() || EMBEDDED.is_empty() => Err(e.into()),
        Err(_) => unpack(&cache_root()).context(
            "unpacking the embedded data sets (pass --data-dir DIR or set QWEN3_QUANT_DATA to use a data folder instead)",
        ),
    }
}

/// Whether `dir` is an unpacked embedded set (it has no zero-shot tasks or MMLU).
pub fn is_embedded(dir: &Path) -> bool {
    dir.join(COMPLETE).is_file()
}

fn cache_root() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("XDG_CACHE_HOME")
        .or_else(|| env("HOME").map(|h| h.join(".cache")))
        .or_else(|| env("LOCALAPPDATA"))
        .unwrap_or_else(std::env::temp_dir)
        .join("qwen3-quant")
}

/// Unpacks the embedded files into `<root>/data-<version>-<hash>` once (atomically: a hidden
/// folder renamed into place) and returns that folder.
fn unpack(root: &Path) -> anyhow::Result<PathBuf> {
    let hash = EMBEDDED
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, (name, bytes)| {
            let h = name
                .bytes()
                .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
            (h ^ bytes.len() as u64).wrapping_mul(0x100_0000_01b3)
        });
    let dir = root.join(format!("data-{}-{hash:016x}", env!("CARGO_PKG_VERSION")));
    if is_embedded(&dir) {
        return Ok(dir);
    }
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = root.join(format!(".data-tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for (name, bytes) in EMBEDDED {
        let p = tmp.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    std::fs::write(tmp.join(COMPLETE), b"").context("writing the completion marker")?;
    if std::fs::rename(&tmp, &dir).is_err() {
        if is_embedded(&dir) {
            // Another process finished first.
            let _ = std::fs::remove_dir_all(&tmp);
            return Ok(dir);
        }
        // A stale incomplete folder is in the way.
        let _ = std::fs::remove_dir_all(&dir);
        let renamed = std::fs::rename(&tmp, &dir);
        if renamed.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        renamed.with_context(|| format!("moving the data into {}", dir.display()))?;
    }
    eprintln!("unpacked the embedded data sets into {}", dir.display());
    Ok(dir)
}

#[cfg(all(test, qwen3_embedded_data))]
mod tests {
    use super::*;

    #[test]
    fn embedded_sets_unpack_to_the_bundled_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = unpack(root.path()).unwrap();
        assert!(is_embedded(&dir));
        let source = qwen3_quant::data::source_data_dir();
        for (name, _) in EMBEDDED {
            let a = std::fs::read(dir.join(name)).unwrap();
            let b = std::fs::read(source.join(name)).unwrap();
            assert!(a == b, "{name} differs from the bundled file");
        }
        // A second call reuses the folder; an incomplete one is unpacked again.
        assert_eq!(unpack(root.path()).unwrap(), dir);
        std::fs::remove_file(dir.join(COMPLETE)).unwrap();
        assert_eq!(unpack(root.path()).unwrap(), dir);
        assert!(is_embedded(&dir));
        // The loaders read them: docs ids and the WikiText-2 test split.
        let ids = qwen3_quant_eval::data::read_token_tensor(
            &dir.join("docs/docs.tokens.safetensors"),
            "valid",
        )
        .unwrap();
        assert!(ids.len() > 100_000);
    }
}
