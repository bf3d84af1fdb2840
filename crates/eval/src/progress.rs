//! Progress reporting: indicatif bars with an ETA on stderr, or nothing.

use indicatif::{ProgressBar, ProgressStyle};

/// Whether long loops show a progress bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Progress {
    /// A bar with elapsed time, rate and ETA on stderr (hidden automatically when stderr is not a terminal).
    #[default]
    Bar,
    /// No output at all (tests, `--json` pipelines that want silence).
    Hidden,
}

impl Progress {
    /// A bar of `len` steps labelled `msg`.
    pub fn bar(self, len: u64, msg: &str) -> ProgressBar {
        match self {
            Progress::Hidden => ProgressBar::hidden(),
            Progress::Bar => {
                let pb = ProgressBar::new(len);
                let style = ProgressStyle::with_template(
                    "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, ETA {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                pb.set_style(style);
                pb.set_message(msg.to_string());
                pb
            }
        }
    }
}
