//! `fusekit lint`: check a paired dataset and report findings.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use fusekit_dataset::DecodeLevel;
use fusekit_hyp::Imgsz;
use fusekit_lint::{
    HtmlOptions, LevelSelectors, LintSection, find_config, parse_decode, read_config,
};
use fusekit_stages::lint::{FailOn, Params, Settings};

use crate::output::ReportFormat;
use crate::progress::Bars;

/// Arguments of `fusekit lint`.
#[derive(Args)]
#[command(
    after_long_help = "Exit status: 0 no error-level findings (no warnings either with --strict), \
1 findings, 2 usage error or invalid dataset description (DS001).\n\n\
Levels can also be set in the [lint] section of fusekit.toml (next to the dataset or in the \
working directory): deny, warn and allow lists, decode, imgsz and strict. Flags win.\n\n\
`fusekit rules` lists every code."
)]
pub struct LintArgs {
    /// A data yaml, or a dataset folder (with data.yaml, or images/ imagesIR/ labels/).
    data: PathBuf,
    /// Output format: human text, JSON (stable, versioned), SARIF 2.1.0 for CI annotations, or
    /// one self-contained HTML page (with --out) with thumbnails of the pairs, filterable by
    /// code and severity.
    #[arg(long, value_enum, default_value_t = ReportFormat::Human)]
    format: ReportFormat,
    /// Write the report to FILE (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// HTML report: findings per code shown with thumbnails (the rest are listed without).
    #[arg(long, default_value_t = fusekit_lint::THUMBNAILS_PER_CODE, value_name = "N")]
    thumbnails_per_code: usize,
    /// `header` reads headers, end markers and a partial content hash (the first and last
    /// 64 KiB of each file; fast); `full` decodes every pixel of both images (finds corrupt
    /// data and constant images).
    #[arg(long, value_parser = parse_decode)]
    decode: Option<DecodeLevel>,
    /// Report these codes (or families: PAIR, IMG, LBL, DS; or ALL) as errors.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    deny: Vec<String>,
    /// Report these codes (or families) as warnings.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    warn: Vec<String>,
    /// Do not report these codes (or families).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    allow: Vec<String>,
    /// Fail (exit 1) on warnings too.
    #[arg(long)]
    strict: bool,
    /// Findings of these codes (or families) do not fail (exit 0 for them); they are still
    /// reported, as `accept:` does in a pipeline file.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    accept: Vec<String>,
    /// Apply safe label fixes (LBL007 clip, LBL009 drop duplicate, LBL012 polygon to box).
    /// Every changed file is first copied under --backup-dir; images are never touched.
    #[arg(long, requires = "backup_dir")]
    fix: bool,
    /// Where --fix copies the originals of the files it changes.
    #[arg(long, value_name = "DIR")]
    backup_dir: Option<PathBuf>,
    /// Check only the first N pairs (in path order).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Training image size (long side) used to find boxes too small to learn (LBL011); the
    /// config's `imgsz`, else 640.
    #[arg(long)]
    imgsz: Option<Imgsz>,
    /// Class names, comma-separated, for a dataset folder without data.yaml.
    #[arg(long, value_delimiter = ',')]
    names: Option<Vec<String>>,
    /// Config file with a [lint] section (default: fusekit.toml next to the dataset, then in
    /// the working directory).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Human output: findings shown per code (0: all).
    #[arg(long, default_value_t = 20, value_name = "N")]
    max_per_code: usize,
}

/// The `[lint]` section of the config file that applies to `data`: `explicit`, else
/// `fusekit.toml` next to the dataset, else in the working directory; empty when there is none.
pub fn load_config(
    data: &Path,
    explicit: Option<&Path>,
) -> anyhow::Result<(Option<PathBuf>, LintSection)> {
    let dataset_dir = if data.is_dir() {
        data
    } else {
        data.parent().unwrap_or(Path::new("."))
    };
    let path = match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => find_config(&[dataset_dir, Path::new(".")]),
    };
    let section = match &path {
        Some(path) => read_config(path)?,
        None => LintSection::default(),
    };
    Ok((path, section))
}

/// The level selectors of the config file that applies to `data` (split and cache leave out
/// the pairs with error-level findings at these levels).
pub fn config_levels(data: &Path, explicit: Option<&Path>) -> anyhow::Result<LevelSelectors> {
    let (_, section) = load_config(data, explicit)?;
    Ok(section.selectors())
}

impl LintArgs {
    /// The stage's parameters: the config file's `[lint]` section with the flags over it.
    fn params(&self, section: &LintSection) -> anyhow::Result<Params> {
        let (mut settings, config_imgsz) = Settings::from_config(section)?;
        settings.deny.extend(self.deny.iter().cloned());
        settings.warn.extend(self.warn.iter().cloned());
        settings.allow.extend(self.allow.iter().cloned());
        if let Some(decode) = self.decode {
            settings.decode = decode;
        }
        if self.strict {
            settings.fail_on = FailOn::Warning;
        }
        settings.accept.extend(self.accept.iter().cloned());
        let imgsz = match (self.imgsz, config_imgsz) {
            (Some(imgsz), _) => imgsz,
            (None, Some(size)) => Imgsz::new(size).context("imgsz of the [lint] config")?,
            (None, None) => Imgsz::DEFAULT,
        };
        Ok(Params {
            data: self.data.clone(),
            names: self.names.clone(),
            imgsz,
            settings,
            limit: self.limit,
            fix_backup: if self.fix {
                self.backup_dir.clone()
            } else {
                None
            },
            report_dir: None,
        })
    }
}

/// Runs the lint and prints the report; the exit code follows the report.
pub fn run(args: LintArgs) -> anyhow::Result<ExitCode> {
    let (config, section) = load_config(&args.data, args.config.as_deref())?;
    let params = args.params(&section)?;
    let outcome = fusekit_stages::lint::run(&params, &Bars::default())?;
    let header = outcome.header(&args.data, config.as_deref());
    let report = &outcome.report;
    let text = match args.format {
        ReportFormat::Human => report.to_human(&header, args.max_per_code),
        ReportFormat::Json => report.to_json() + "\n",
        ReportFormat::Sarif => {
            let root = outcome
                .root
                .as_deref()
                .and_then(|r| std::fs::canonicalize(r).ok())
                .unwrap_or_default();
            report.to_sarif(&format!("file://{}/", root.display())) + "\n"
        }
        ReportFormat::Html => report.to_html(&HtmlOptions {
            header: &header,
            root: outcome.root.as_deref(),
            ir_norm: outcome.ir_norm,
            thumbnails_per_code: args.thumbnails_per_code,
        }),
    };
    match &args.out {
        Some(path) => fusekit_stages::lint::write_file(path, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(ExitCode::from(outcome.exit_code()))
}
