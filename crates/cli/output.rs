//! What the subcommands share about their output.

use clap::ValueEnum;

/// `--format` of commands that print for people or for machines.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Text for people.
    Human,
    /// JSON for machines.
    Json,
}
