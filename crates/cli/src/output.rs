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

/// A command line clap rejects: with `--json` anywhere in it, `{"error": ...}` on stdout (and
/// the usual message on stderr) with clap's exit status 2; help and version print as usual.
pub fn argument_error(e: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    let json = std::env::args_os().skip(1).any(|a| a == "--json");
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if !json || informational {
        e.exit();
    }
    let rendered = e.render().to_string();
    // clap's first paragraph is the message ("error: unexpected argument ..."); usage follows.
    let msg = rendered
        .trim_start()
        .split("\n\n")
        .next()
        .unwrap_or("invalid arguments")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string();
    print_json(&serde_json::json!({ "error": msg, "kind": format!("{:?}", e.kind()) }));
    eprint!("{rendered}");
    std::process::ExitCode::from(2)
}
