//! The progress bars of `export` and `import`: one per kind of item, with counts and rates,
//! drawn only for a person at a terminal.

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting `what`, to `total` when it is known.
pub(super) fn counter(what: &str, total: Option<u64>) -> ProgressBar {
    let (bar, template) = match total {
        Some(total) => (
            ProgressBar::new(total),
            "{spinner} {prefix:>9} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
        ),
        None => (
            ProgressBar::new_spinner(),
            "{spinner} {prefix:>9} {pos} ({per_sec})",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// `n thing` or `n things`.
pub(super) fn count(n: u64, thing: &str) -> String {
    if n == 1 {
        format!("1 {thing}")
    } else {
        format!("{n} {thing}s")
    }
}
