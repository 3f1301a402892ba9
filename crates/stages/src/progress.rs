//! How a stage reports progress without drawing anything itself.

/// Receives a stage's progress: counted tasks (`begin`, `advance` per item from any thread,
/// `end`) and notes, lines meant for the person watching (stderr in the CLI).
pub trait Progress: Sync {
    /// A task of `total` items named `unit` starts, e.g. `("lint", 120, "pairs")`.
    fn begin(&self, task: &'static str, total: u64, unit: &'static str) {
        let _ = (task, total, unit);
    }

    /// One item of the current task is done; called from worker threads.
    fn advance(&self) {}

    /// The current task is over.
    fn end(&self) {}

    /// A line for the log: what the stage is about to do, or what it found on the way.
    fn note(&self, line: &str) {
        let _ = line;
    }
}

/// Progress that goes nowhere (tests, embedding).
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {}
