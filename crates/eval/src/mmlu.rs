//! 5-shot MMLU, the paper's protocol (`eval_my/mmlu/evaluate_hf.py`, derived from Hendrycks' `test` code).
//!
//! * Data: Hendrycks CSVs `{dev,test}/<subject>_{dev,test}.csv`, no header, columns
//!   `question, A, B, C, D, answer`; subjects in sorted order.
//! * Prompt: `"The following are multiple choice questions (with answers) about {format_subject}.\n\n"`
//!   then `k` dev examples `"{q}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {X}\n\n"` then the test question
//!   formatted the same way up to `"Answer:"`. Hendrycks' `format_subject` prefixes every word with a
//!   space (`" abstract algebra"`), which gives a double space after "about"; [`SubjectStyle::Plain`]
//!   uses a single space instead.
//! * Cells are read as `pandas.read_csv(header=None)` would print them: a cell in pandas' default
//!   NA list (`""`, `"NA"`, `"N/A"`, `"None"`, `"nan"`, `"null"`, …) becomes `"nan"`
//!   ([`MmluOptions::pandas_na`]; 10 test questions have a `None` option).
//! * While the prompt has more than `max_len` (2048) tokens, `k` is reduced; at `k = 0` a still too
//!   long prompt is left-truncated to `max_len` tokens (the reference would loop on with `k = -1`).
//! * Prediction: argmax of the last-position logits at the ids of `"A"`, `"B"`, `"C"`, `"D"`
//!   (`encode(letter)`'s last id, no leading space); first maximum on ties.
//! * Metrics: accuracy over all questions (the paper's "weighted accuracy"), per subject, and per
//!   category (Hendrycks' 57 subjects → 17 subcategories → 4 categories).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tasks::mean_and_stderr;
use crate::{EvalError, LanguageModel, Progress, TextEncoder};

/// Where MMLU lives inside the data folder (`<repo>/assets/data`).
pub const MMLU_SUBDIR: &str = "tasks/mmlu";

/// Answer letters.
pub const CHOICES: [&str; 4] = ["A", "B", "C", "D"];

/// The four categories, in Hendrycks' order.
pub const CATEGORIES: [&str; 4] = [
    "STEM",
    "humanities",
    "social sciences",
    "other (business, health, misc.)",
];

/// Hendrycks' subject → subcategory map (`categories.py`).
pub const SUBCATEGORIES: [(&str, &str); 57] = [
    ("abstract_algebra", "math"),
    ("anatomy", "health"),
    ("astronomy", "physics"),
    ("business_ethics", "business"),
    ("clinical_knowledge", "health"),
    ("college_biology", "biology"),
    ("college_chemistry", "chemistry"),
    ("college_computer_science", "computer science"),
    ("college_mathematics", "math"),
    ("college_medicine", "health"),
    ("college_physics", "physics"),
    ("computer_security", "computer science"),
    ("conceptual_physics", "physics"),
    ("econometrics", "economics"),
    ("electrical_engineering", "engineering"),
    ("elementary_mathematics", "math"),
    ("formal_logic", "philosophy"),
    ("global_facts", "other"),
    ("high_school_biology", "biology"),
    ("high_school_chemistry", "chemistry"),
    ("high_school_computer_science", "computer science"),
    ("high_school_european_history", "history"),
    ("high_school_geography", "geography"),
    ("high_school_government_and_politics", "politics"),
    ("high_school_macroeconomics", "economics"),
    ("high_school_mathematics", "math"),
    ("high_school_microeconomics", "economics"),
    ("high_school_physics", "physics"),
    ("high_school_psychology", "psychology"),
    ("high_school_statistics", "math"),
    ("high_school_us_history", "history"),
    ("high_school_world_history", "history"),
    ("human_aging", "health"),
    ("human_sexuality", "culture"),
    ("international_law", "law"),
    ("jurisprudence", "law"),
    ("logical_fallacies", "philosophy"),
    ("machine_learning", "computer science"),
    ("management", "business"),
    ("marketing", "business"),
    ("medical_genetics", "health"),
    ("miscellaneous", "other"),
    ("moral_disputes", "philosophy"),
    ("moral_scenarios", "philosophy"),
    ("nutrition", "health"),
    ("philosophy", "philosophy"),
    ("prehistory", "history"),
    ("professional_accounting", "other"),
    ("professional_law", "law"),
    ("professional_medicine", "health"),
    ("professional_psychology", "psychology"),
    ("public_relations", "politics"),
    ("security_studies", "politics"),
    ("sociology", "culture"),
    ("us_foreign_policy", "politics"),
    ("virology", "health"),
    ("world_religions", "philosophy"),
];

/// The category of a subject (`None` for a subject outside the standard 57).
pub fn category_of(subject: &str) -> Option<&'static str> {
    let sub = SUBCATEGORIES.iter().find(|(s, _)| *s == subject)?.1;
    Some(match sub {
        "physics" | "chemistry" | "biology" | "computer science" | "math" | "engineering" => {
            CATEGORIES[0]
        }
        "history" | "philosophy" | "law" => CATEGORIES[1],
        "politics" | "culture" | "economics" | "geography" | "psychology" => CATEGORIES[2],
        _ => CATEGORIES[3],
    })
}

/// How the subject is written in the prompt header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SubjectStyle {
    /// Hendrycks' `format_subject`: `"about" + " abstract algebra"` → `"about  abstract algebra."`.
    #[default]
    Hendrycks,
    /// `"about abstract algebra."` (underscores to spaces, single space).
    Plain,
}

/// One question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmluQuestion {
    /// Question text.
    pub question: String,
    /// The four options.
    pub choices: [String; 4],
    /// Index of the correct option.
    pub answer: usize,
}

/// Options of [`run_mmlu`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MmluOptions {
    /// Dev examples in the prompt (5).
    pub ntrain: usize,
    /// Maximum prompt length in tokens (2048).
    pub max_len: usize,
    /// Score only the first `K` test questions of each subject.
    pub limit_per_subject: Option<usize>,
    /// Restrict to these subjects (`None`: every subject with a test file).
    pub subjects: Option<Vec<String>>,
    /// Prompts per model call.
    pub batch_size: usize,
    /// Prompt header style.
    pub subject_style: SubjectStyle,
    /// Print pandas-NA cells as `"nan"`, as the pandas-based reference does.
    pub pandas_na: bool,
}

qwen3_quant_core::setters!(MmluOptions {
    ntrain: usize => with_ntrain,
    max_len: usize => with_max_len,
    limit_per_subject: Option<usize> => with_limit_per_subject,
    subjects: Option<Vec<String>> => with_subjects,
    batch_size: usize => with_batch_size,
    subject_style: SubjectStyle => with_subject_style,
    pandas_na: bool => with_pandas_na,
});

impl Default for MmluOptions {
    fn default() -> Self {
        MmluOptions {
            ntrain: 5,
            max_len: 2048,
            limit_per_subject: None,
            subjects: None,
            batch_size: 1,
            subject_style: SubjectStyle::Hendrycks,
            pandas_na: true,
        }
    }
}

/// pandas' default NA strings (`pandas._libs.parsers.STR_NA_VALUES`, pandas 2.x).
const PANDAS_NA: [&str; 19] = [
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
];

fn cell(s: &str, pandas_na: bool) -> String {
    if pandas_na && PANDAS_NA.contains(&s) {
        "nan".to_string()
    } else {
        s.to_string()
    }
}

/// Reads one Hendrycks CSV.
pub fn load_csv(path: &Path, pandas_na: bool) -> Result<Vec<MmluQuestion>, EvalError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .map_err(|e| EvalError::parse(path, e.to_string()))?;
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| EvalError::parse(path, e.to_string()))?;
        if rec.len() != 6 {
            return Err(EvalError::parse(
                path,
                format!("row {}: {} columns, expected 6", i + 1, rec.len()),
            ));
        }
        let answer = CHOICES
            .iter()
            .position(|c| *c == rec[5].trim())
            .ok_or_else(|| {
                EvalError::parse(path, format!("row {}: answer {:?}", i + 1, &rec[5]))
            })?;
        out.push(MmluQuestion {
            question: cell(&rec[0], pandas_na),
            choices: [
                cell(&rec[1], pandas_na),
                cell(&rec[2], pandas_na),
                cell(&rec[3], pandas_na),
                cell(&rec[4], pandas_na),
            ],
            answer,
        });
    }
    Ok(out)
}

/// Subjects with a `test/<subject>_test.csv`, sorted.
pub fn list_subjects(mmlu_dir: &Path) -> Result<Vec<String>, EvalError> {
    let dir = mmlu_dir.join("test");
    let mut subjects: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| EvalError::io(&dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix("_test.csv"))
                .map(str::to_string)
        })
        .collect();
    subjects.sort();
    Ok(subjects)
}

/// A question in prompt form, with `" {X}\n\n"` appended when `include_answer`.
pub fn format_example(q: &MmluQuestion, include_answer: bool) -> String {
    let mut s = q.question.clone();
    for (letter, choice) in CHOICES.iter().zip(&q.choices) {
        s.push_str(&format!("\n{letter}. {choice}"));
    }
    s.push_str("\nAnswer:");
    if include_answer {
        s.push_str(&format!(" {}\n\n", CHOICES[q.answer]));
    }
    s
}

/// Header plus the first `k` dev examples.
pub fn gen_prompt(dev: &[MmluQuestion], subject: &str, k: usize, style: SubjectStyle) -> String {
    let subject = match style {
        SubjectStyle::Hendrycks => subject
            .split('_')
            .map(|w| format!(" {w}"))
            .collect::<String>(),
        SubjectStyle::Plain => subject.replace('_', " "),
    };
    let mut s =
        format!("The following are multiple choice questions (with answers) about {subject}.\n\n");
    for q in &dev[..k.min(dev.len())] {
        s.push_str(&format_example(q, true));
    }
    s
}

/// A tokenized prompt and the number of shots it kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmluPrompt {
    /// Prompt text.
    pub text: String,
    /// Its token ids (left-truncated to `max_len` if even the 0-shot prompt is too long).
    pub ids: Vec<u32>,
    /// Shots used.
    pub k: usize,
}

/// Builds the prompt of one test question, reducing the shots while it exceeds `opts.max_len` tokens.
pub fn build_prompt(
    encoder: &dyn TextEncoder,
    dev: &[MmluQuestion],
    subject: &str,
    q: &MmluQuestion,
    opts: &MmluOptions,
) -> Result<MmluPrompt, EvalError> {
    let end = format_example(q, false);
    let mut k = opts.ntrain.min(dev.len());
    loop {
        let text = gen_prompt(dev, subject, k, opts.subject_style) + &end;
        let mut ids = encoder.encode(&text)?;
        if ids.len() <= opts.max_len || k == 0 {
            if ids.len() > opts.max_len {
                ids.drain(..ids.len() - opts.max_len);
            }
            return Ok(MmluPrompt { text, ids, k });
        }
        k -= 1;
    }
}

/// Accuracy of one group of questions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupAcc {
    /// Accuracy.
    pub acc: f64,
    /// Questions.
    pub n: usize,
}

/// Result of [`run_mmlu`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmluResult {
    /// Accuracy over all questions (the paper's weighted accuracy).
    pub acc: f64,
    /// Standard error of `acc` (sample stddev / sqrt(n)).
    pub acc_stderr: f64,
    /// Questions scored.
    pub n: usize,
    /// Per subject, sorted by subject.
    pub subjects: Vec<(String, GroupAcc)>,
    /// Per category, in [`CATEGORIES`] order (categories without questions are left out).
    pub categories: Vec<(String, GroupAcc)>,
    /// Mean shots used (≤ `ntrain` because of shot reduction).
    pub mean_shots: f64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Token ids of `"A"`, `"B"`, `"C"`, `"D"` (last id of each encoding).
pub fn choice_ids(encoder: &dyn TextEncoder) -> Result<[u32; 4], EvalError> {
    let mut out = [0u32; 4];
    for (o, c) in out.iter_mut().zip(CHOICES) {
        *o = *encoder
            .encode(c)?
            .last()
            .ok_or_else(|| EvalError::Tokenizer(format!("{c:?} encodes to nothing")))?;
    }
    Ok(out)
}

/// Runs 5-shot MMLU over `mmlu_dir` (`<data>/tasks/mmlu`, with `dev/` and `test/`).
pub fn run_mmlu(
    model: &dyn LanguageModel,
    encoder: &dyn TextEncoder,
    mmlu_dir: &Path,
    opts: &MmluOptions,
    progress: Progress,
) -> Result<MmluResult, EvalError> {
    let start = std::time::Instant::now();
    let subjects = match &opts.subjects {
        Some(s) => s.clone(),
        None => list_subjects(mmlu_dir)?,
    };
    let ids = choice_ids(encoder)?;
    // (subject index, prompt, answer)
    let mut items: Vec<(usize, MmluPrompt, usize)> = Vec::new();
    for (si, subject) in subjects.iter().enumerate() {
        let dev = load_csv(
            &mmlu_dir.join("dev").join(format!("{subject}_dev.csv")),
            opts.pandas_na,
        )?;
        let test_path: PathBuf = mmlu_dir.join("test").join(format!("{subject}_test.csv"));
        let mut test = load_csv(&test_path, opts.pandas_na)?;
        if let Some(l) = opts.limit_per_subject {
            test.truncate(l);
        }
        let prompts: Vec<_> = {
            use rayon::prelude::*;
            test.par_iter()
                .map(|q| build_prompt(encoder, &dev, subject, q, opts).map(|p| (si, p, q.answer)))
                .collect::<Result<_, EvalError>>()?
        };
        items.extend(prompts);
    }
    let pb = progress.bar(items.len() as u64, "mmlu");
    let mut correct = vec![0.0f64; items.len()];
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].1.ids.len()));
    for chunk in order.chunks(opts.batch_size.max(1)) {
        let seqs: Vec<&[u32]> = chunk.iter().map(|&i| items[i].1.ids.as_slice()).collect();
        let logits = model.last_logits(&seqs)?;
        for (&i, row) in chunk.iter().zip(&logits) {
            let scores: Vec<f64> = ids
                .iter()
                .map(|&t| {
                    row.get(t as usize)
                        .map(|&x| x as f64)
                        .ok_or_else(|| EvalError::Model("short logits row".into()))
                })
                .collect::<Result<_, _>>()?;
            correct[i] = (crate::tasks::argmax(&scores) == items[i].2) as u8 as f64;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let group = |pred: &dyn Fn(usize) -> bool| {
        let v: Vec<f64> = items
            .iter()
            .zip(&correct)
            .filter(|((s, _, _), _)| pred(*s))
            .map(|(_, &c)| c)
            .collect();
        GroupAcc {
            acc: if v.is_empty() {
                f64::NAN
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            },
            n: v.len(),
        }
    };
    let subj_res: Vec<(String, GroupAcc)> = subjects
        .iter()
        .enumerate()
        .map(|(si, s)| (s.clone(), group(&|x| x == si)))
        .collect();
    let categories = CATEGORIES
        .iter()
        .map(|c| {
            (
                c.to_string(),
                group(&|x| category_of(&subjects[x]) == Some(c)),
            )
        })
        .filter(|(_, g)| g.n > 0)
        .collect();
    let (acc, acc_stderr) = mean_and_stderr(&correct);
    let mean_shots =
        items.iter().map(|(_, p, _)| p.k as f64).sum::<f64>() / items.len().max(1) as f64;
    Ok(MmluResult {
        acc,
        acc_stderr,
        n: items.len(),
        subjects: subj_res,
        categories,
        mean_shots,
        seconds: start.elapsed().as_secs_f64(),
    })
}
