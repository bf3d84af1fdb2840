//! Full-precision perplexity of qwen3-micro with the reference protocol (docs_32, wiki2_32),
//! within 0.05% of the values in `assets/golden/reference_ppl.json`.

mod common;
use common::*;

#[test]
fn fp32_docs_32_and_wiki2_32_match_the_reference() {
    let Some(_) = qwen3_quant::io::assets::require("models/qwen3-micro") else {
        return;
    };
    let m = micro();
    let docs = ppl(&m, &docs("valid"), 32);
    let want = reference("fp32", "docs_32");
    eprintln!("fp32 docs_32 = {docs:.4} (reference {want})");
    assert!(rel(docs, want).abs() <= 5e-4, "docs_32 {docs} vs {want}");
    let wiki = ppl(&m, &wiki2_ids(), 32);
    let want = reference("fp32", "wiki2_32");
    eprintln!("fp32 wiki2_32 = {wiki:.4} (reference {want})");
    assert!(rel(wiki, want).abs() <= 5e-4, "wiki2_32 {wiki} vs {want}");
}
