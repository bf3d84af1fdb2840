//! `qwen3-quant`: quantize, evaluate, inspect and benchmark Qwen3 models from the command line.
//!
//! The command names, options and JSON fields follow `docs/cli-contract.md`; scripts rely on them.
//! Every command accepts `--json`: exactly one JSON object on stdout (progress and logs on stderr),
//! and `{"error": "..."}` with a non-zero exit status on failure.

mod args;
mod bench_cmd;
mod calib_source;
mod data_dir;
mod eval_cmd;
mod generate_cmd;
mod inspect_cmd;
mod output;
mod plan;
mod quantize_cmd;
mod save;
mod sweep_cmd;

use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return output::argument_error(e),
    };
    let json = cli.command.json();
    let result = match cli.command {
        Command::Inspect(a) => inspect_cmd::run(a),
        Command::Eval(a) => eval_cmd::run(a),
        Command::Quantize(a) => quantize_cmd::run(a),
        Command::Bench(a) => bench_cmd::run(a),
        Command::Generate(a) => generate_cmd::run(a),
        Command::Sweep(a) => sweep_cmd::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::report_error(&e, json);
            ExitCode::FAILURE
        }
    }
}
