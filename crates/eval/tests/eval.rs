//! Integration tests: perplexity exactness on a mock model, lm-eval request byte-identity against
//! the golden samples, tokenisation split, MMLU prompts, reports.

use std::path::PathBuf;
use std::sync::OnceLock;

use qwen3_quant_eval::tasks::{encode_pair, load_task, Task};
use qwen3_quant_eval::{EvalError, LanguageModel, TextEncoder};
use qwen3_quant_model::{Qwen3Model, Tokenizer};

/// The bundled assets (`QWEN3_QUANT_ASSETS`, else the workspace's `assets/`); tests that need
/// them start with `assets::require`, which skips them with a printed reason when absent.
fn assets() -> PathBuf {
    qwen3_quant_io::assets::dir().unwrap_or_else(qwen3_quant_io::assets::workspace_dir)
}

fn data_dir() -> PathBuf {
    assets().join("data")
}

/// Deterministic bigram model: logits[pos] = table[token at pos].
struct Bigram {
    vocab: usize,
    table: Vec<f32>,
}

impl Bigram {
    fn new(vocab: usize) -> Self {
        let table = (0..vocab * vocab)
            .map(|i| ((i * 7919 % 31) as f32 - 15.0) * 0.37)
            .collect();
        Bigram { vocab, table }
    }
    /// Hand-computed log p(b | a), in f64.
    fn logp(&self, a: u32, b: u32) -> f64 {
        let row = &self.table[a as usize * self.vocab..(a as usize + 1) * self.vocab];
        let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
        row[b as usize] as f64 - z.ln()
    }
}

impl LanguageModel for Bigram {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
        Ok(seqs
            .iter()
            .map(|s| {
                s.iter()
                    .flat_map(|&t| {
                        self.table[t as usize * self.vocab..(t as usize + 1) * self.vocab]
                            .iter()
                            .copied()
                    })
                    .collect()
            })
            .collect())
    }
}

/// Byte-level encoder (one token per byte) for tests that need no real tokenizer.
struct Bytes;
impl TextEncoder for Bytes {
    fn encode(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        Ok(text.bytes().map(u32::from).collect())
    }
}

/// The bundled `qwen3-micro` model and tokenizer (f32), loaded once per test binary.
fn micro() -> &'static (Qwen3Model, Tokenizer) {
    static MICRO: OnceLock<(Qwen3Model, Tokenizer)> = OnceLock::new();
    MICRO.get_or_init(|| {
        let dir = assets().join("models/qwen3-micro");
        (
            Qwen3Model::load(&dir).unwrap(),
            Tokenizer::from_dir(&dir).unwrap(),
        )
    })
}

fn micro_tokenizer() -> &'static Tokenizer {
    &micro().1
}

mod ppl {
    use super::*;
    use qwen3_quant_eval::ppl::plan_windows;
    use qwen3_quant_eval::{evaluate_ppl, load_dataset, Dataset, PplOptions, Progress};

    #[test]
    fn windows_drop_the_tail() {
        let o = PplOptions::default().with_seq_len(10);
        let p = plan_windows(35, &o).unwrap();
        assert_eq!(p, vec![(0, 10, 1), (10, 20, 11), (20, 30, 21)]);
        let o2 = o.clone().with_max_windows(Some(2));
        assert_eq!(plan_windows(35, &o2).unwrap().len(), 2);
        assert!(plan_windows(9, &o).is_err());
        assert_eq!(plan_windows(10, &o).unwrap().len(), 1);
    }

    #[test]
    fn sliding_windows_score_each_token_once() {
        let o = PplOptions::default().with_seq_len(8).with_stride(Some(3));
        let p = plan_windows(20, &o).unwrap();
        assert_eq!(p[0], (0, 8, 1));
        assert_eq!(p[1], (3, 11, 8));
        let mut scored = vec![0; 20];
        for &(b, e, f) in &p {
            assert!(b < f && e - b <= 8);
            for c in &mut scored[f..e] {
                *c += 1;
            }
        }
        assert_eq!(scored[0], 0);
        assert!(scored[1..].iter().all(|&c| c == 1), "{scored:?}");
        assert_eq!(p.last().unwrap().1, 20);
    }

    #[test]
    fn gptq_ppl_matches_hand_computation() {
        let m = Bigram::new(11);
        let ids: Vec<u32> = (0..103u32).map(|i| (i * i + 3 * i + 1) % 11).collect();
        for batch in [1, 2, 5] {
            let o = PplOptions::default()
                .with_seq_len(16)
                .with_batch_size(batch);
            let r = evaluate_ppl(&m, &ids, &o, Progress::Hidden).unwrap();
            assert_eq!((r.windows, r.seq_len, r.tokens), (6, 16, 96));
            let mut acc = 0.0;
            for w in 0..6 {
                let win = &ids[w * 16..(w + 1) * 16];
                let nll: f64 = (1..16).map(|t| -m.logp(win[t - 1], win[t])).sum::<f64>() / 15.0;
                acc += nll;
            }
            let expect = (acc / 6.0).exp();
            assert!(
                (r.ppl - expect).abs() / expect < 1e-6,
                "{} vs {expect}",
                r.ppl
            );
        }
        // Sliding window: token-weighted over every target once.
        let o = PplOptions::default().with_seq_len(16).with_stride(Some(16));
        let r = evaluate_ppl(&m, &ids, &o, Progress::Hidden).unwrap();
        // Bigram: only the previous token matters. Targets 16, 32, … open a window and are not scored.
        let scored: Vec<usize> = (1..103).filter(|t| t % 16 != 0).collect();
        let nll: f64 = scored
            .iter()
            .map(|&t| -m.logp(ids[t - 1], ids[t]))
            .sum::<f64>()
            / scored.len() as f64;
        let o3 = PplOptions::default().with_seq_len(16).with_stride(Some(5));
        let r3 = evaluate_ppl(&m, &ids, &o3, Progress::Hidden).unwrap();
        let all: f64 = (1..103).map(|t| -m.logp(ids[t - 1], ids[t])).sum::<f64>() / 102.0;
        assert!((r3.ppl - all.exp()).abs() / all.exp() < 1e-6);
        assert!((r.ppl - nll.exp()).abs() / nll.exp() < 1e-6);
        assert_eq!(r.windows, 7);
    }

    /// Logits of ±1e30-ish magnitude must not overflow.
    #[test]
    fn log_softmax_is_stable_with_huge_logits() {
        struct Huge;
        impl LanguageModel for Huge {
            fn vocab_size(&self) -> usize {
                3
            }
            fn logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
                Ok(seqs
                    .iter()
                    .map(|s| {
                        s.iter()
                            .flat_map(|_| [3.0e38f32, 3.0e38 - 4.0e31, -3.0e38])
                            .collect()
                    })
                    .collect())
            }
        }
        let r = evaluate_ppl(
            &Huge,
            &[0, 0, 0, 0],
            &PplOptions::default().with_seq_len(4),
            Progress::Hidden,
        )
        .unwrap();
        // Target 0 is the max: the two top logits differ by 4e31, so p(0) = 1.
        assert!(
            r.ppl.is_finite() && (r.ppl - 1.0).abs() < 1e-12,
            "{}",
            r.ppl
        );
        let row = [1000.0f32, 1000.0, -1000.0];
        let lp = qwen3_quant_eval::model::token_logprob(&row, 0).unwrap();
        assert!((lp as f64 - (0.5f64).ln()).abs() < 1e-6);
    }

    #[test]
    fn bundled_datasets_load() {
        let Some(_) = qwen3_quant_io::assets::require("data") else {
            return;
        };
        let docs = load_dataset(&Dataset::Docs, &data_dir(), None).unwrap();
        assert_eq!(docs.ids.len(), 254_048);
        assert!(docs.ids.iter().all(|&t| t < 8192));
        let text = qwen3_quant_eval::ppl::dataset_text(&Dataset::WikiText2, &data_dir())
            .unwrap()
            .unwrap();
        assert_eq!(text.len(), 1_296_370); // bytes of "\n\n".join(rows), PROVENANCE.md
        let raw = qwen3_quant_eval::ppl::dataset_text(&Dataset::WikiText2Raw, &data_dir())
            .unwrap()
            .unwrap();
        assert_eq!(raw.len(), 1_290_590);
        let c4 = qwen3_quant_eval::ppl::dataset_text(&Dataset::C4Sample, &data_dir())
            .unwrap()
            .unwrap();
        assert!(c4.len() > 1_000_000);
        assert!(
            load_dataset(&Dataset::WikiText2, &data_dir(), None).is_err(),
            "needs an encoder"
        );
        let w = load_dataset(&Dataset::WikiText2Raw, &data_dir(), Some(&Bytes)).unwrap();
        assert_eq!(w.ids.len(), 1_290_590);
        assert_eq!(Dataset::parse("c4"), Dataset::C4Sample);
        assert_eq!(Dataset::parse("wikitext2-raw").name(), "wikitext2-raw");
    }

    #[test]
    fn c4_paper_windows_skip_short_documents() {
        let Some(_) = qwen3_quant_io::assets::require("data") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard.jsonl");
        // 45,220 docs; doc 25247 (window 0) is long, everything else is short.
        let mut s = String::new();
        for i in 0..45_220 {
            let text = if i == 25_247 {
                "x".repeat(388 + 2048)
            } else {
                "short".to_string()
            };
            s.push_str(&format!("{{\"text\": \"{text}\"}}\n"));
        }
        std::fs::write(&path, s).unwrap();
        let d = load_dataset(&Dataset::C4Paper { path }, &data_dir(), Some(&Bytes)).unwrap();
        assert_eq!(d.ids.len(), 2048);
        assert_eq!(d.warnings.len(), 255);
        assert_eq!(qwen3_quant_eval::C4_PAPER_WINDOWS.len(), 256);
        assert_eq!(qwen3_quant_eval::C4_PAPER_WINDOWS[255], (699, 36));
    }
}

mod tasks {
    use super::*;
    use qwen3_quant_eval::tasks::{score_docs, TaskOptions};
    use qwen3_quant_eval::Progress;

    fn golden() -> serde_json::Value {
        let text =
            std::fs::read_to_string(assets().join("golden/lm_eval_micro_samples_limit10.json"))
                .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every (context, continuation) lm-eval 0.4.13 produced for the first 10 docs of each task.
    #[test]
    fn requests_are_byte_identical_to_lm_eval() {
        let Some(_) = qwen3_quant_io::assets::require("data") else {
            return;
        };
        let g = golden();
        for task in Task::ALL {
            let docs = load_task(task, &data_dir(), Some(10)).unwrap();
            let gold_docs = g[task.name()].as_array().unwrap();
            assert_eq!(docs.len(), 10);
            assert_eq!(gold_docs.len(), 10);
            for (i, (d, gd)) in docs.iter().zip(gold_docs).enumerate() {
                let greqs = gd["requests"].as_array().unwrap();
                assert_eq!(d.requests.len(), greqs.len(), "{} doc {i}", task.name());
                for (r, gr) in d.requests.iter().zip(greqs) {
                    assert_eq!(
                        r.context,
                        gr["context"].as_str().unwrap(),
                        "{} doc {i} context",
                        task.name()
                    );
                    assert_eq!(
                        r.continuation,
                        gr["continuation"].as_str().unwrap(),
                        "{} doc {i}",
                        task.name()
                    );
                }
                match &gd["target"] {
                    serde_json::Value::Number(n) => {
                        assert_eq!(d.gold as u64, n.as_u64().unwrap(), "{} {i}", task.name())
                    }
                    // WinoGrande's target is the continuation; the gold index comes from `answer`.
                    serde_json::Value::String(s) => {
                        assert_eq!(&d.requests[d.gold].continuation[1..], s)
                    }
                    v => panic!("unexpected target {v}"),
                }
            }
        }
    }

    /// Golden acc / acc_norm from the golden log-likelihoods reproduce lm-eval's argmax logic.
    #[test]
    fn golden_loglikelihoods_give_consistent_predictions() {
        let Some(_) = qwen3_quant_io::assets::require("data") else {
            return;
        };
        let g = golden();
        for task in Task::ALL {
            let docs = load_task(task, &data_dir(), Some(10)).unwrap();
            let scores: Vec<_> = docs
                .iter()
                .zip(g[task.name()].as_array().unwrap())
                .map(|(d, gd)| {
                    let lls = gd["requests"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["loglikelihood"].as_f64().unwrap())
                        .collect();
                    qwen3_quant_eval::tasks::score_doc(d, lls)
                })
                .collect();
            let r =
                qwen3_quant_eval::tasks::aggregate(task.name(), task.has_acc_norm(), scores, 0.0);
            assert_eq!(r.n, 10);
            assert!((0.0..=1.0).contains(&r.acc));
            assert_eq!(r.acc_norm.is_some(), task.has_acc_norm());
        }
    }

    #[test]
    fn encode_pair_moves_trailing_space_and_splits_whole() {
        let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
            return;
        };
        let tok = micro_tokenizer();
        let (ctx, cont) = encode_pair(
            tok,
            "Question: dresser\nAnswer:",
            " replace drawer with bobby pin ",
        )
        .unwrap();
        let whole = tok
            .encode("Question: dresser\nAnswer: replace drawer with bobby pin ")
            .unwrap();
        assert_eq!(ctx, tok.encode("Question: dresser\nAnswer:").unwrap());
        assert_eq!([ctx.clone(), cont.clone()].concat(), whole);
        let text = tok.decode(&cont).unwrap();
        assert_eq!(text, " replace drawer with bobby pin ");
        // Trailing whitespace of the context goes to the continuation.
        let (c2, k2) = encode_pair(&Bytes, "ab  ", "c").unwrap();
        assert_eq!((c2, k2), (vec![97, 98], vec![32, 32, 99]));
    }

    #[test]
    fn loglikelihoods_and_metrics_on_mock() {
        let Some(_) = qwen3_quant_io::assets::require("data") else {
            return;
        };
        let m = Bigram::new(256);
        let docs = load_task(Task::Piqa, &data_dir(), Some(6)).unwrap();
        for batch in [1, 3, 16] {
            let opts = TaskOptions::default().with_batch_size(batch);
            let r = score_docs(&m, &Bytes, Task::Piqa, &docs, &opts, Progress::Hidden).unwrap();
            assert_eq!(r.n, 6);
            let mut accs = Vec::new();
            let mut norms = Vec::new();
            for (d, s) in docs.iter().zip(&r.docs) {
                let mut lls = Vec::new();
                for (req, ll) in d.requests.iter().zip(&s.loglikelihoods) {
                    let ctx = req.context.as_bytes();
                    let cont = req.continuation.as_bytes();
                    let all: Vec<u8> = [ctx, cont].concat();
                    let expect: f64 = (ctx.len()..all.len())
                        .map(|t| m.logp(all[t - 1] as u32, all[t] as u32))
                        .sum();
                    assert!((ll - expect).abs() < 1e-3, "{ll} vs {expect}");
                    lls.push(expect);
                }
                let pred = if lls[1] > lls[0] { 1 } else { 0 };
                let n: Vec<f64> = lls
                    .iter()
                    .zip(&d.choice_lens)
                    .map(|(l, &c)| l / c as f64)
                    .collect();
                let pred_n = if n[1] > n[0] { 1 } else { 0 };
                accs.push((pred == d.gold) as u8 as f64);
                norms.push((pred_n == d.gold) as u8 as f64);
            }
            let mean = accs.iter().sum::<f64>() / 6.0;
            let var = accs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 5.0;
            assert!((r.acc - mean).abs() < 1e-12);
            assert!((r.acc_stderr - (var / 6.0).sqrt()).abs() < 1e-12);
            assert!((r.acc_norm.unwrap() - norms.iter().sum::<f64>() / 6.0).abs() < 1e-12);
        }
        // Truncation to max_length keeps the continuation's log-probs computable.
        let opts = TaskOptions::default().with_max_length(8);
        let r = score_docs(&m, &Bytes, Task::Piqa, &docs[..1], &opts, Progress::Hidden).unwrap();
        assert!(r.docs[0].loglikelihoods.iter().all(|x| x.is_finite()));
    }
}

mod mmlu {
    use super::*;
    use qwen3_quant_eval::mmlu::{
        build_prompt, category_of, choice_ids, gen_prompt, list_subjects, load_csv, SubjectStyle,
        CATEGORIES, SUBCATEGORIES,
    };
    use qwen3_quant_eval::{run_mmlu, MmluOptions, Progress};

    fn mmlu_dir() -> PathBuf {
        data_dir().join("tasks/mmlu")
    }

    const ABSTRACT_ALGEBRA_0: &str = "The following are multiple choice questions (with answers) about  abstract algebra.

Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.
A. 0
B. 1
C. 2
D. 3
Answer: B

Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are subgroups of G then HK is a subgroup of G.
A. True, True
B. False, False
C. True, False
D. False, True
Answer: B

Statement 1 | Every element of a group generates a cyclic subgroup of the group. Statement 2 | The symmetric group S_10 has 10 elements.
A. True, True
B. False, False
C. True, False
D. False, True
Answer: C

Statement 1| Every function from a finite set onto itself must be one to one. Statement 2 | Every subgroup of an abelian group is abelian.
A. True, True
B. False, False
C. True, False
D. False, True
Answer: A

Find the characteristic of the ring 2Z.
A. 0
B. 3
C. 12
D. 30
Answer: A

Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.
A. 0
B. 4
C. 2
D. 6
Answer:";

    #[test]
    fn full_five_shot_prompt() {
        let Some(_) = qwen3_quant_io::assets::require("data") else {
            return;
        };
        let dev = load_csv(&mmlu_dir().join("dev/abstract_algebra_dev.csv"), true).unwrap();
        let test = load_csv(&mmlu_dir().join("test/abstract_algebra_test.csv"), true).unwrap();
        assert_eq!((dev.len(), test.len()), (5, 100));
        let p = build_prompt(
            &Bytes,
            &dev,
            "abstract_algebra",
            &test[0],
            &MmluOptions::default(),
        )
        .unwrap();
        assert_eq!(p.k, 5);
        assert_eq!(p.text, ABSTRACT_ALGEBRA_0);
        assert_eq!(p.ids.len(), ABSTRACT_ALGEBRA_0.len());
        assert_eq!(test[0].answer, 1);
        let plain = gen_prompt(&dev, "abstract_algebra", 0, SubjectStyle::Plain);
        assert_eq!(plain, "The following are multiple choice questions (with answers) about abstract algebra.\n\n");
    }

    #[test]
    fn shots_are_reduced_to_fit() {
        let Some(_) = qwen3_quant_io::assets::require("data") else {
            return;
        };
        let dev = load_csv(&mmlu_dir().join("dev/abstract_algebra_dev.csv"), true).unwrap();
        let test = load_csv(&mmlu_dir().join("test/abstract_algebra_test.csv"), true).unwrap();
        let q = &test[0];
        let len = |k| {
            (gen_prompt(&dev, "abstract_algebra", k, SubjectStyle::Hendrycks)
                + &qwen3_quant_eval::mmlu::format_example(q, false))
                .len()
        };
        // Exactly the 3-shot length fits: k goes 5 → 4 → 3.
        let opts = MmluOptions::default().with_max_len(len(3));
        let p = build_prompt(&Bytes, &dev, "abstract_algebra", q, &opts).unwrap();
        assert_eq!(p.k, 3);
        assert_eq!(p.ids.len(), len(3));
        let opts = MmluOptions::default().with_max_len(len(3) - 1);
        assert_eq!(
            build_prompt(&Bytes, &dev, "abstract_algebra", q, &opts)
                .unwrap()
                .k,
            2
        );
        // Even 0 shots too long: left-truncated to max_len.
        let opts = MmluOptions::default().with_max_len(10);
        let p = build_prompt(&Bytes, &dev, "abstract_algebra", q, &opts).unwrap();
        assert_eq!((p.k, p.ids.len()), (0, 10));
        let tail: Vec<u32> = p.text.as_bytes()[p.text.len() - 10..]
            .iter()
            .map(|&b| b as u32)
            .collect();
        assert_eq!(p.ids, tail);
    }

    #[test]
    fn pandas_na_cells_print_as_nan() {
        let Some(_) = qwen3_quant_io::assets::require("data") else {
            return;
        };
        let t = load_csv(&mmlu_dir().join("test/college_physics_test.csv"), true).unwrap();
        assert!(t.iter().any(|q| q.choices[3] == "nan"));
        let raw = load_csv(&mmlu_dir().join("test/college_physics_test.csv"), false).unwrap();
        assert!(raw.iter().any(|q| q.choices[3] == "None"));
    }

    #[test]
    fn subjects_and_categories() {
        let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
            return;
        };
        let subjects = list_subjects(&mmlu_dir()).unwrap();
        assert_eq!(subjects.len(), 57);
        for s in &subjects {
            assert!(category_of(s).is_some(), "{s}");
        }
        assert_eq!(SUBCATEGORIES.len(), 57);
        let count = |c: &str| {
            subjects
                .iter()
                .filter(|s| category_of(s) == Some(c))
                .count()
        };
        assert_eq!(
            [
                count(CATEGORIES[0]),
                count(CATEGORIES[1]),
                count(CATEGORIES[2]),
                count(CATEGORIES[3])
            ],
            [18, 13, 12, 14]
        );
        let ids = choice_ids(micro_tokenizer()).unwrap();
        assert_eq!(
            ids.iter().collect::<std::collections::HashSet<_>>().len(),
            4
        );
    }

    /// A model whose last-position logits favour the letter of the byte at position 0 of the
    /// prompt's last line... simpler: always favours "B". Accuracy = share of B answers.
    #[test]
    fn run_mmlu_on_mock() {
        let Some(_) = qwen3_quant_io::assets::require("data") else {
            return;
        };
        struct AlwaysB;
        impl LanguageModel for AlwaysB {
            fn vocab_size(&self) -> usize {
                256
            }
            fn logits(&self, seqs: &[&[u32]]) -> Result<Vec<Vec<f32>>, EvalError> {
                Ok(seqs
                    .iter()
                    .map(|s| {
                        let mut v = vec![0.0f32; s.len() * 256];
                        let last = (s.len() - 1) * 256;
                        v[last + b'B' as usize] = 5.0;
                        v
                    })
                    .collect())
            }
        }
        let opts = MmluOptions::default()
            .with_limit_per_subject(Some(7))
            .with_subjects(Some(vec!["abstract_algebra".into(), "virology".into()]))
            .with_batch_size(4);
        let r = run_mmlu(&AlwaysB, &Bytes, &mmlu_dir(), &opts, Progress::Hidden).unwrap();
        assert_eq!(r.n, 14);
        let mut bs = 0;
        for s in ["abstract_algebra", "virology"] {
            let t = load_csv(&mmlu_dir().join(format!("test/{s}_test.csv")), true).unwrap();
            bs += t[..7].iter().filter(|q| q.answer == 1).count();
        }
        assert!((r.acc - bs as f64 / 14.0).abs() < 1e-12);
        assert_eq!(r.categories.len(), 2); // STEM and other
        assert_eq!(r.mean_shots, 5.0);
    }
}

mod report {
    use qwen3_quant_eval::mmlu::{GroupAcc, MmluResult};
    use qwen3_quant_eval::report::{
        plot_metric_vs_bits, sweep_markdown, write_sweep_csv, PlotOptions,
    };
    use qwen3_quant_eval::tasks::{aggregate, DocScore};
    use qwen3_quant_eval::{EvalReport, MetricKey, PplResult, SweepEntry};

    fn sample(ppl: f64, acc_b: bool) -> EvalReport {
        let mut r = EvalReport::new("models/qwen3-micro");
        r.add_ppl(
            "docs",
            PplResult {
                ppl,
                windows: 32,
                seq_len: 1024,
                tokens: 32768,
                seconds: 2.0,
                tokens_per_s: 16384.0,
            },
        );
        let d = |pred, gold| DocScore {
            loglikelihoods: vec![-1.0, -2.0],
            gold,
            pred,
            pred_norm: pred,
        };
        r.add_task(&aggregate(
            "piqa",
            true,
            vec![d(0, 0), d(1, 0), d(1, 1), d(0, usize::from(!acc_b))],
            1.0,
        ));
        r.add_task(&aggregate("winogrande", false, vec![d(0, 0)], 1.0));
        r.add_mmlu(&MmluResult {
            acc: 0.25,
            acc_stderr: 0.01,
            n: 100,
            subjects: vec![("anatomy".into(), GroupAcc { acc: 0.25, n: 100 })],
            categories: vec![(
                "other (business, health, misc.)".into(),
                GroupAcc { acc: 0.25, n: 100 },
            )],
            mean_shots: 5.0,
            seconds: 1.0,
        });
        r
    }

    #[test]
    fn json_shape_matches_cli_contract() {
        let r = sample(18.5676, true);
        let v: serde_json::Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        assert_eq!(v["model"], "models/qwen3-micro");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|s| s.as_str()).collect();
        assert_eq!(keys.len(), 3);
        let p = v["ppl"]["docs"].as_object().unwrap();
        let pk: std::collections::BTreeSet<&str> = p.keys().map(|s| s.as_str()).collect();
        assert_eq!(
            pk,
            [
                "ppl",
                "windows",
                "seq_len",
                "tokens",
                "seconds",
                "tokens_per_s"
            ]
            .into_iter()
            .collect()
        );
        assert_eq!(p["windows"], 32);
        let piqa = &v["tasks"]["piqa"];
        assert_eq!(piqa["acc"], 0.75);
        assert_eq!(piqa["n"], 4);
        // sqrt(var_ddof1 / n) of [1, 0, 1, 1] = sqrt(0.25 / 4)
        assert!((piqa["acc_stderr"].as_f64().unwrap() - 0.25).abs() < 1e-12);
        assert!(piqa["acc_norm"].is_number());
        let w = &v["tasks"]["winogrande"];
        assert!(w["acc_norm"].is_null() && w.get("acc_norm").is_some());
        assert!(w["acc_stderr"].is_null(), "n = 1: undefined stderr is null");
        assert_eq!(v["tasks"]["mmlu"]["acc"], 0.25);
        assert!(v["tasks"]["mmlu"]["acc_norm"].is_null());
        assert_eq!(
            v["tasks"]["mmlu"]["categories"]["other (business, health, misc.)"],
            0.25
        );
        // Task order is insertion order, and the JSON reads back.
        let order: Vec<&str> = v["tasks"]
            .as_object()
            .unwrap()
            .keys()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(order.len(), 3);
        let back: EvalReport = serde_json::from_str(&r.to_json().unwrap()).unwrap();
        assert_eq!(
            back.tasks.keys().collect::<Vec<_>>(),
            vec!["piqa", "winogrande", "mmlu"]
        );
        assert_eq!(back.ppl, r.ppl);
        let md = r.to_markdown();
        assert!(
            md.contains("| docs | 18.5676 | 32 | 1024 | 32768 |"),
            "{md}"
        );
        assert!(
            md.contains("| piqa | 0.7500 | 0.2500 | 0.7500 | 4 |"),
            "{md}"
        );
    }

    #[test]
    fn sweep_tables_and_plot() {
        let entries: Vec<SweepEntry> = [
            ("fp", 16.0, 18.57),
            ("rtn", 8.0, 18.57),
            ("rtn", 4.0, 18.91),
            ("rtn", 3.0, 20.8),
            ("gptq", 4.0, 18.80),
            ("gptq", 3.0, 19.7),
        ]
        .into_iter()
        .map(|(m, b, p)| SweepEntry {
            method: m.into(),
            bits: b,
            label: format!("{m}_w{b}"),
            report: sample(p, b > 3.5),
        })
        .collect();
        let md = sweep_markdown(&entries);
        assert!(md.starts_with("| label | method | bits | ppl:docs | piqa:acc | piqa:acc_norm | winogrande:acc | mmlu:acc |"), "{md}");
        assert!(md.contains("| rtn_w3 | rtn | 3 | 20.800 | 50.00 |"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        let csv_path = dir.path().join("sweep.csv");
        write_sweep_csv(&entries, &csv_path).unwrap();
        let csv = std::fs::read_to_string(&csv_path).unwrap();
        assert_eq!(csv.lines().count(), 7);
        assert!(csv.starts_with(
            "label,method,bits,ppl:docs,piqa:acc,piqa:acc_norm,winogrande:acc,mmlu:acc\n"
        ));
        let png = dir.path().join("ppl.png");
        let legend = plot_metric_vs_bits(
            &entries,
            &MetricKey::Ppl("docs".into()),
            &png,
            &PlotOptions::default().with_log_y(true),
        )
        .unwrap();
        assert_eq!(
            legend.iter().map(|l| l.0.as_str()).collect::<Vec<_>>(),
            ["fp", "rtn", "gptq"]
        );
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 1000);
        let acc_png = dir.path().join("acc.png");
        plot_metric_vs_bits(
            &entries,
            &MetricKey::Acc("piqa".into()),
            &acc_png,
            &PlotOptions::default(),
        )
        .unwrap();
        assert!(plot_metric_vs_bits(
            &entries,
            &MetricKey::Acc("nope".into()),
            &acc_png,
            &PlotOptions::default()
        )
        .is_err());
    }
}

/// The whole zero-shot pipeline (requests, tokenisation split, batching, scoring) on the real
/// `qwen3-micro` model through the `LanguageModel`/`TextEncoder` glue of `qwen3_quant_eval::qwen3`,
/// against what lm-evaluation-harness 0.4.13 reported for the same model in f32.
mod micro {
    use super::*;
    use qwen3_quant_eval::tasks::TaskOptions;
    use qwen3_quant_eval::Progress;

    /// The per-request log-likelihoods of the first 10 docs of each of the 7 tasks agree with
    /// lm-eval's to 1e-4 relative, and every document's `argmax` (raw and length-normalised) is the same.
    #[test]
    fn zero_shot_loglikelihoods_match_lm_eval_on_micro_model() {
        let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
            return;
        };
        use qwen3_quant_eval::tasks::compare_with_lm_eval_samples;
        let (model, tok) = micro();
        let golden = assets().join("golden/lm_eval_micro_samples_limit10.json");
        let opts = TaskOptions::default().with_batch_size(16);
        let c = compare_with_lm_eval_samples(model, tok, &data_dir(), &golden, 10, &opts).unwrap();
        eprintln!(
            "worst relative log-likelihood difference vs lm-eval: {:.2e} {:?}",
            c.max_rel_diff, c.worst
        );
        assert_eq!(c.docs, 7 * 10);
        assert_eq!(c.requests, 10 * (2 + 4 + 4 + 4 + 2 + 2 + 4));
        assert_eq!(c.request_mismatches, 0);
        assert!(c.max_rel_diff < 1e-4, "{c:?}");
        assert!(
            c.decision_mismatches.is_empty(),
            "{:?}",
            c.decision_mismatches
        );
    }

    /// `acc` / `acc_norm` of `lm_eval --limit 50` (`assets/golden/lm_eval_micro_limit50.json`).
    fn check_limit50(tasks: &[Task]) {
        let (model, tok) = micro();
        let g: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(assets().join("golden/lm_eval_micro_limit50.json")).unwrap(),
        )
        .unwrap();
        for &task in tasks {
            let opts = TaskOptions::default()
                .with_batch_size(16)
                .with_limit(Some(50));
            let r =
                qwen3_quant_eval::run_task(model, tok, task, &data_dir(), &opts, Progress::Hidden)
                    .unwrap();
            let want = &g["results"][task.name()];
            assert_eq!(r.n, 50);
            assert!(
                (r.acc - want["acc"].as_f64().unwrap()).abs() < 1e-9,
                "{} acc {} vs {}",
                task.name(),
                r.acc,
                want["acc"]
            );
            match want.get("acc_norm") {
                Some(v) => assert!(
                    (r.acc_norm.unwrap() - v.as_f64().unwrap()).abs() < 1e-9,
                    "{} acc_norm",
                    task.name()
                ),
                None => assert!(r.acc_norm.is_none()),
            }
        }
    }

    /// lm-eval's `--limit 50` accuracies of all seven tasks.
    #[test]
    fn lm_eval_limit50_metrics_on_micro_model() {
        let Some(_) = qwen3_quant_io::assets::require("models/qwen3-micro") else {
            return;
        };
        check_limit50(&Task::ALL);
    }
}
