//! Calibration data: where the tokens come from and how they are cut into windows.

use std::path::{Path, PathBuf};

use qwen3_quant_calib::{first_windows, gptq_windows, random_windows, CalibrationSet};
use qwen3_quant_eval::data::{read_jsonl, read_text, read_token_tensor};
use qwen3_quant_model::Tokenizer;

use crate::data::find_data_dir;
use crate::error::{Error, Result};

/// The study's calibration: 128 windows of 2048 tokens.
pub const PAPER_SAMPLES: usize = 128;
/// Tokens per calibration window in the study.
pub const PAPER_SEQ_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq)]
enum Source {
    Docs,
    C4,
    WikiText2,
    TextFile(PathBuf),
    Tokens(Vec<u32>),
}

/// Where calibration tokens come from and how many windows of how many tokens are taken.
/// `Default`: the bundled C4 sample, 128 × 2048 tokens (the study's size), the first windows of
/// the documents joined by blank lines; [`Calibration::seed`] draws random windows instead
/// (for C4, GPTQ's sampler: one random window from each random document long enough).
///
/// ```
/// # let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else { return Ok(()); };
/// use qwen3_quant::{Calibration, Model};
/// let model = Model::open(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/qwen3-micro"))?;
/// // The micro models' own validation text, tokenized as shipped: 4 windows of 256 tokens.
/// let set = Calibration::docs().windows(4, 256).build(model.tokenizer())?;
/// assert_eq!((set.len(), set.seq_len), (4, 256));
/// // Any text file, 2 random windows.
/// let path = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/data/docs/calib.txt");
/// let set = Calibration::text_file(path).windows(2, 128).seed(0).build(model.tokenizer())?;
/// assert_eq!(set.tokens(), 256);
/// # Ok::<(), qwen3_quant::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    source: Source,
    samples: usize,
    seq_len: usize,
    seed: Option<u64>,
    data_dir: Option<PathBuf>,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration::c4()
    }
}

impl Calibration {
    fn from_source(source: Source) -> Self {
        Calibration {
            source,
            samples: PAPER_SAMPLES,
            seq_len: PAPER_SEQ_LEN,
            seed: None,
            data_dir: None,
        }
    }

    /// The bundled C4 validation sample (the study calibrates on C4).
    pub fn c4() -> Self {
        Self::from_source(Source::C4)
    }

    /// The calibration split of the bundled micro-model documentation text (token ids as
    /// shipped, made with the micro models' tokenizer: use it with those models only).
    pub fn docs() -> Self {
        Self::from_source(Source::Docs)
    }

    /// The WikiText-2 validation split joined by blank lines (the test split is what is scored).
    pub fn wikitext2() -> Self {
        Self::from_source(Source::WikiText2)
    }

    /// A UTF-8 text file (gzipped if it ends in `.gz`), tokenized as one text.
    pub fn text_file(path: impl Into<PathBuf>) -> Self {
        Self::from_source(Source::TextFile(path.into()))
    }

    /// Token ids of your own.
    pub fn tokens(ids: Vec<u32>) -> Self {
        Self::from_source(Source::Tokens(ids))
    }

    /// `samples` windows of `seq_len` tokens.
    pub fn windows(mut self, samples: usize, seq_len: usize) -> Self {
        self.samples = samples;
        self.seq_len = seq_len;
        self
    }

    /// Random windows drawn with `seed` instead of the first ones.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The data folder for the bundled sources (default: [`find_data_dir`]).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Windows.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Tokens per window.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// A short description (`c4 128x2048`, `docs 4x256 seed 0`, …) for logs and result files.
    ///
    /// ```
    /// assert_eq!(qwen3_quant::Calibration::c4().describe(), "c4 128x2048");
    /// ```
    pub fn describe(&self) -> String {
        let src = match &self.source {
            Source::Docs => "docs".to_string(),
            Source::C4 => "c4".to_string(),
            Source::WikiText2 => "wikitext2".to_string(),
            Source::TextFile(p) => p.display().to_string(),
            Source::Tokens(ids) => format!("{} given tokens", ids.len()),
        };
        let seed = self.seed.map_or(String::new(), |s| format!(" seed {s}"));
        format!("{src} {}x{}{seed}", self.samples, self.seq_len)
    }

    fn data(&self) -> Result<PathBuf> {
        find_data_dir(self.data_dir.as_deref())
    }

    /// Reads, tokenizes and cuts the windows.
    ///
    /// # Errors
    /// Missing files, too few tokens for the windows asked for, tokenizer errors.
    pub fn build(&self, tok: &Tokenizer) -> Result<CalibrationSet> {
        let stream = |ids: Vec<u32>, what: &str| -> Result<CalibrationSet> {
            let mut set = match self.seed {
                None => first_windows(&ids, self.samples, self.seq_len)?,
                Some(s) => random_windows(&ids, self.samples, self.seq_len, s)?,
            };
            set.description = format!("{what}: {}", set.description);
            Ok(set)
        };
        match &self.source {
            Source::Docs => {
                let path = self.data()?.join("docs/docs.tokens.safetensors");
                stream(read_token_tensor(&path, "calib")?, "docs calib split")
            }
            Source::WikiText2 => {
                let path = self
                    .data()?
                    .join("wikitext2/wikitext-2-raw-v1.validation.jsonl");
                let rows = read_jsonl(&path)?;
                let text: Vec<&str> = rows.iter().filter_map(|r| r["text"].as_str()).collect();
                stream(tok.encode(&text.join("\n\n"))?, "wikitext2 validation")
            }
            Source::C4 => {
                let rows = read_jsonl(&c4_sample(&self.data()?)?)?;
                let docs: Vec<&str> = rows.iter().filter_map(|r| r["text"].as_str()).collect();
                match self.seed {
                    Some(s) => {
                        let ids = docs
                            .iter()
                            .map(|d| tok.encode(d))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                        let mut set = gptq_windows(&ids, self.samples, self.seq_len, s)?;
                        set.description = format!("c4 sample: {}", set.description);
                        Ok(set)
                    }
                    None => stream(tok.encode(&docs.join("\n\n"))?, "c4 sample"),
                }
            }
            Source::TextFile(p) => stream(tok.encode(&read_text(p)?)?, &p.display().to_string()),
            Source::Tokens(ids) => stream(ids.clone(), "given tokens"),
        }
    }
}

fn c4_sample(data: &Path) -> Result<PathBuf> {
    let dir = data.join("c4");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::file(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().contains(".jsonl"))
        .collect();
    files.sort();
    files
        .into_iter()
        .next()
        .ok_or_else(|| Error::invalid(format!("no C4 *.jsonl[.gz] sample in {}", dir.display())))
}
