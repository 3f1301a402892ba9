//! Progress bars on stderr (hidden by indicatif when stderr is not a terminal), and the
//! [`Progress`] the stages report to.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fusekit_stages::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `len` items named `unit`, with rate and ETA, labelled `stage`.
pub fn bar(stage: &str, len: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template =
        format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} eta {{eta}}");
    bar.set_style(
        ProgressStyle::with_template(&template)
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(stage.to_owned());
    bar
}

/// Bars appear once a stage has run this long, so quick commands print no bar at all.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// Draws a stage's tasks as bars (once it has run for [`SHOW_AFTER`]) and prints its notes
/// on stderr.
pub struct Bars {
    started: Instant,
    /// The current task's bar, and whether bars are drawn yet.
    current: Mutex<(Option<ProgressBar>, bool)>,
}

impl Default for Bars {
    fn default() -> Self {
        Bars {
            started: Instant::now(),
            current: Mutex::new((None, false)),
        }
    }
}

impl Bars {
    fn with_bar(&self, f: impl FnOnce(&mut Option<ProgressBar>)) {
        let mut state = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let (current, shown) = &mut *state;
        f(current);
        if let Some(bar) = current {
            if *shown {
                return;
            }
            if self.started.elapsed() >= SHOW_AFTER {
                bar.set_draw_target(ProgressDrawTarget::stderr());
                *shown = true;
            } else {
                bar.set_draw_target(ProgressDrawTarget::hidden());
            }
        }
    }
}

impl Progress for Bars {
    fn begin(&self, task: &'static str, total: u64, unit: &'static str) {
        self.with_bar(|current| {
            if let Some(old) = current.take() {
                old.finish_and_clear();
            }
            *current = Some(bar(task, total, unit));
        });
    }

    fn advance(&self) {
        self.with_bar(|current| {
            if let Some(bar) = current {
                bar.inc(1);
            }
        });
    }

    fn end(&self) {
        self.with_bar(|current| {
            if let Some(bar) = current.take() {
                bar.finish_and_clear();
            }
        });
    }

    fn note(&self, line: &str) {
        self.with_bar(|current| match current {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        });
    }
}
