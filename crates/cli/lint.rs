//! `fusekit lint`: check a paired dataset and report findings.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use fusekit_dataset::{Dataset, DecodeLevel};
use fusekit_lint::{
    LevelSelectors, Levels, LintOptions, LintSection, Report, apply_fixes, find_config, lint_scan,
    pairs_to_check, parse_decode, read_config,
};

use crate::progress;

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
    /// Output format: human text, JSON (stable, versioned) or SARIF 2.1.0 for CI annotations.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// `header` reads headers, end markers and a content hash (fast); `full` decodes every
    /// pixel of both images (finds corrupt data and constant images).
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
    /// Training image size (long side) used to find boxes too small to learn (LBL011).
    #[arg(long)]
    imgsz: Option<u32>,
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
    Sarif,
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

/// A finished lint: the report and what the human header says.
pub struct Linted {
    /// The report (levels applied, fixes marked).
    pub report: Report,
    /// The first line of the human report.
    pub header: String,
    /// Warnings fail too.
    pub strict: bool,
    /// The dataset root, when the dataset description could be used.
    pub root: Option<PathBuf>,
}

/// Runs the lint and prints the report; the exit code follows the report.
pub fn run(args: LintArgs) -> anyhow::Result<ExitCode> {
    let linted = lint(&args)?;
    print_report(
        &linted.report,
        &args,
        linted.root.as_deref(),
        &linted.header,
    );
    Ok(ExitCode::from(linted.report.exit_code(linted.strict)))
}

/// Lints as `fusekit lint` does (fixes included), without printing the report.
pub fn lint(args: &LintArgs) -> anyhow::Result<Linted> {
    let started = Instant::now();
    let (config_path, section) = load_config(&args.data, args.config.as_deref())?;
    let mut levels = Levels::default();
    levels.apply(&section.selectors())?;
    levels.apply(&LevelSelectors {
        deny: args.deny.clone(),
        warn: args.warn.clone(),
        allow: args.allow.clone(),
    })?;
    let decode = match (args.decode, &section.decode) {
        (Some(decode), _) => decode,
        (None, Some(text)) => parse_decode(text).map_err(anyhow::Error::msg)?,
        (None, None) => DecodeLevel::Header,
    };
    let options = LintOptions {
        decode,
        imgsz: args.imgsz.or(section.imgsz).unwrap_or(640),
        limit: args.limit,
        levels,
    };
    let strict = args.strict || section.strict.unwrap_or(false);

    let dataset = match Dataset::open(&args.data, args.names.clone()) {
        Ok(dataset) => dataset,
        Err(err) => {
            return Ok(Linted {
                report: Report::invalid_dataset(err.to_string()),
                header: format!("fusekit lint {}", args.data.display()),
                strict,
                root: None,
            });
        }
    };
    let scan = dataset.scan();
    let bar = progress::bar("lint", pairs_to_check(&scan, &options) as u64, "pairs");
    let mut run = lint_scan(&dataset, &scan, &options, &|| bar.inc(1));
    bar.finish_and_clear();

    if args.fix && !run.fixes.is_empty() {
        let backup_dir = args
            .backup_dir
            .as_deref()
            .expect("clap requires --backup-dir with --fix");
        apply_fixes(&run.fixes, &dataset.root, backup_dir).context("writing label fixes")?;
        let fixed: Vec<(String, Vec<fusekit_lint::Code>)> = run
            .fixes
            .iter()
            .map(|f| {
                (
                    dataset.relative(&f.label).display().to_string(),
                    f.codes.clone(),
                )
            })
            .collect();
        run.report.mark_fixed(|finding| {
            fixed.iter().any(|(label, codes)| {
                finding.label.as_deref() == Some(label) && codes.contains(&finding.code)
            })
        });
        eprintln!(
            "fixed {} label file{}; originals copied to {}",
            run.fixes.len(),
            if run.fixes.len() == 1 { "" } else { "s" },
            backup_dir.display()
        );
    }

    let mut per_split = vec![0usize; dataset.splits.len()];
    for pair in &scan.pairs {
        for &split in &pair.splits {
            per_split[split] += 1;
        }
    }
    let splits: Vec<String> = dataset
        .splits
        .iter()
        .zip(&per_split)
        .map(|(s, n)| format!("{} {n}", s.name))
        .collect();
    let header = format!(
        "fusekit lint {}: {} pairs checked ({}), decode {}, {:.2} s{}",
        args.data.display(),
        run.report.summary.pairs,
        splits.join(", "),
        if decode == DecodeLevel::Full {
            "full"
        } else {
            "header"
        },
        started.elapsed().as_secs_f64(),
        config_path
            .map(|p| format!(", config {}", p.display()))
            .unwrap_or_default()
    );
    Ok(Linted {
        report: run.report,
        header,
        strict,
        root: Some(dataset.root),
    })
}

fn print_report(report: &Report, args: &LintArgs, root: Option<&Path>, header: &str) {
    match args.format {
        Format::Human => print!("{}", report.to_human(header, args.max_per_code)),
        Format::Json => println!("{}", report.to_json()),
        Format::Sarif => {
            let root = root
                .and_then(|r| std::fs::canonicalize(r).ok())
                .unwrap_or_default();
            println!(
                "{}",
                report.to_sarif(&format!("file://{}/", root.display()))
            );
        }
    }
}
