//! Evaluation: perplexity, lm-eval-harness compatible zero-shot tasks, 5-shot MMLU, reports and plots.
