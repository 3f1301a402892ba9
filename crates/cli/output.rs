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

/// `--format` of `fusekit lint`, whose report also comes as SARIF and HTML.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Text for people.
    Human,
    /// JSON for machines (the versioned report).
    Json,
    /// SARIF 2.1.0, for CI code annotations.
    Sarif,
    /// One self-contained HTML page with thumbnails, filterable by code and severity.
    Html,
}
