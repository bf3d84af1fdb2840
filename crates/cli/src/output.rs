//! Printing results: one JSON object on stdout with `--json`, human text otherwise.

use serde_json::Value;

/// Prints `value` as the command's single JSON object.
pub fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("serialisable")
    );
}

/// Reports a failure: `{"error": ...}` on stdout with `--json`, a message on stderr always.
pub fn report_error(e: &anyhow::Error, json: bool) {
    let msg = format!("{e:#}");
    if json {
        print_json(&serde_json::json!({ "error": msg }));
    }
    eprintln!("error: {msg}");
}
