//! `fusekit split`: deterministic, stratified, leak-free train/val/test lists.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use fusekit_dataset::Dataset;
use fusekit_lint::{Levels, LintOptions, lint_scan, pairs_to_check};
use fusekit_split::{GroupBy, Manifest, SplitParams, Stratify, WriteOutcome, plan, write_split};
use regex::Regex;
use serde_json::json;

use crate::lint::load_config;
use crate::output::Format;
use crate::progress;

/// Arguments of `fusekit split`.
#[derive(Args)]
#[command(
    after_long_help = "Writes train.txt, val.txt (and test.txt), split.yaml (a data yaml \
pointing at them) and split.json (seed, ratios, groups, per-class counts, the hash of the inputs) \
into --out, each atomically. The dataset itself is never changed. A rerun with the same inputs \
and parameters writes nothing and says so.\n\n\
Pairs with error-level lint findings are left out and listed (levels from fusekit.toml apply). \
Pairs with byte-identical RGB or IR files always land on one side."
)]
pub struct SplitArgs {
    /// A data yaml, or a dataset folder; all its pairs (train, val and test sources) are split.
    data: PathBuf,
    /// Share for validation (of boxes per class; of pairs for background and --stratify none).
    #[arg(long, default_value_t = 0.2)]
    val: f64,
    /// Share for test.
    #[arg(long, default_value_t = 0.0)]
    test: f64,
    /// Seed: the same inputs and seed give byte-identical files on any machine.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Group pairs by a regex on the file stem (its first capture group, else the whole
    /// match), e.g. '^(\d{2})' for LLVIP-style scene prefixes. A group is never split.
    #[arg(long, value_name = "REGEX", conflicts_with = "group_by_folder")]
    group: Option<String>,
    /// Group pairs by the folder holding the RGB image.
    #[arg(long)]
    group_by_folder: bool,
    /// Balance per-class box counts and background share across sides, or only pair counts.
    #[arg(long, value_enum, default_value_t = StratifyArg::Classes)]
    stratify: StratifyArg,
    /// Where the files go (default: the dataset root).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Report near-identical IR pictures across groups: at most this many of 64 perceptual-hash
    /// bits differ.
    #[arg(long, default_value_t = 4, value_name = "BITS")]
    near_dup_bits: u32,
    /// Skip the near-duplicate search (it decodes every IR image).
    #[arg(long)]
    no_near_dups: bool,
    /// Keep near-duplicate pairs on one side too.
    #[arg(long, conflicts_with = "no_near_dups")]
    dedupe_groups: bool,
    /// Replace list files that this command did not write (the old ones are kept as .bak).
    #[arg(long)]
    force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
    /// Class names, comma-separated, for a dataset folder without data.yaml.
    #[arg(long, value_delimiter = ',')]
    names: Option<Vec<String>>,
    /// Config file with a [lint] section (default: fusekit.toml next to the dataset).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum StratifyArg {
    Classes,
    None,
}

/// Lints, plans, writes (unless current) and reports the split.
pub fn run(args: &SplitArgs) -> anyhow::Result<ExitCode> {
    let (outcome, manifest, out) = split(args)?;
    match args.format {
        Format::Json => {
            let outcome = match &outcome {
                WriteOutcome::UpToDate => "up_to_date",
                WriteOutcome::Written(_) => "written",
            };
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({"outcome": outcome, "out": out, "manifest": manifest})
                )?
            );
        }
        Format::Human => print!(
            "{}",
            human(&args.data.display().to_string(), &manifest, &outcome, &out)
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Lints, plans and writes (unless current) the split as `fusekit split` does, without
/// printing; returns what was written, the manifest and the output folder.
pub fn split(args: &SplitArgs) -> anyhow::Result<(WriteOutcome, Manifest, PathBuf)> {
    let shares_valid = (0.0..1.0).contains(&args.val)
        && (0.0..1.0).contains(&args.test)
        && args.val + args.test < 1.0;
    if !shares_valid {
        bail!(
            "--val and --test must be in [0, 1) and leave a share for train (got {} and {})",
            args.val,
            args.test
        );
    }
    let group_by = match (&args.group, args.group_by_folder) {
        (Some(pattern), _) => {
            GroupBy::Stem(Regex::new(pattern).with_context(|| format!("--group `{pattern}`"))?)
        }
        (None, true) => GroupBy::Folder,
        (None, false) => GroupBy::Pair,
    };
    let params = SplitParams {
        val: args.val,
        test: args.test,
        seed: args.seed,
        stratify: match args.stratify {
            StratifyArg::Classes => Stratify::Classes,
            StratifyArg::None => Stratify::None,
        },
        near_dup_bits: (!args.no_near_dups).then_some(args.near_dup_bits),
        dedupe_near: args.dedupe_groups,
    };
    let (_, section) = load_config(&args.data, args.config.as_deref())?;
    let mut levels = Levels::default();
    levels.apply(&section.selectors())?;
    let options = LintOptions {
        levels,
        ..LintOptions::default()
    };

    let dataset = Dataset::open(&args.data, args.names.clone())
        .context("DS001: the dataset description cannot be used")?;
    let scan = dataset.scan();
    let bar = progress::bar("lint", pairs_to_check(&scan, &options) as u64, "pairs");
    let lint_run = lint_scan(&dataset, &scan, &options, &|| bar.inc(1));
    bar.finish_and_clear();
    let usable = lint_run.pairs.iter().filter(|p| p.usable).count();
    if usable == 0 {
        bail!(
            "{}: no usable pairs to split ({} pairs, all with lint errors; run `fusekit lint`)",
            args.data.display(),
            lint_run.pairs.len()
        );
    }
    let bar = progress::bar(
        "hash IR",
        if params.near_dup_bits.is_some() {
            usable as u64
        } else {
            0
        },
        "pairs",
    );
    let plan = plan(&dataset, &lint_run, &group_by, &params, &|| bar.inc(1));
    bar.finish_and_clear();

    let out = args.out.clone().unwrap_or_else(|| dataset.root.clone());
    let (outcome, manifest) = write_split(&dataset, &plan, &params, &group_by, &out, args.force)?;
    Ok((outcome, manifest, out))
}

/// The human report of a split.
pub fn human(data: &str, m: &Manifest, outcome: &WriteOutcome, out: &std::path::Path) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let usable = m.pairs.train + m.pairs.val + m.pairs.test;
    let groups = m.groups.train + m.groups.val + m.groups.test;
    let _ = writeln!(
        s,
        "fusekit split {data}: {usable} pairs in {groups} groups (grouping: {}), seed {}",
        m.group, m.seed
    );
    let _ = writeln!(s, "\n  side    pairs  groups  background");
    for (side, pairs, groups, background) in [
        ("train", m.pairs.train, m.groups.train, m.background.train),
        ("val", m.pairs.val, m.groups.val, m.background.val),
        ("test", m.pairs.test, m.groups.test, m.background.test),
    ] {
        if side != "test" || m.test > 0.0 {
            let _ = writeln!(s, "  {side:<6}{pairs:>7}{groups:>8}{background:>12}");
        }
    }
    let _ = writeln!(
        s,
        "\n  class                 train      val     test   val share   test share (asked {} / {})",
        m.val, m.test
    );
    for c in &m.classes {
        let _ = writeln!(
            s,
            "  {:<20}{:>8}{:>9}{:>9}   {:>9.3}   {:>10.3}",
            format!("{} {}", c.id, c.name),
            c.boxes.train,
            c.boxes.val,
            c.boxes.test,
            c.val_share,
            c.test_share
        );
    }
    if !m.excluded.is_empty() {
        let _ = writeln!(
            s,
            "\nleft out, with lint errors: {} pairs (`fusekit lint` says why)",
            m.excluded.len()
        );
        for path in m.excluded.iter().take(10) {
            let _ = writeln!(s, "  {path}");
        }
        if m.excluded.len() > 10 {
            let _ = writeln!(
                s,
                "  ... and {} more (listed in split.json)",
                m.excluded.len() - 10
            );
        }
    }
    if m.ungrouped > 0 {
        let _ = writeln!(
            s,
            "\n{} pairs did not match the group regex and form groups of one",
            m.ungrouped
        );
    }
    if m.content_joins > 0 {
        let _ = writeln!(
            s,
            "\n{} groups joined because their RGB or IR files are byte-identical",
            m.content_joins
        );
    }
    if let Some(bits) = m.near_dup_bits {
        let across = m.near_duplicates.iter().filter(|d| d.across).count();
        let _ = writeln!(
            s,
            "\nnear-identical IR pictures in different groups (<= {bits} bits): {} pairs, {across} of them across sides{}",
            m.near_duplicates.len(),
            if across > 0 && !m.dedupe_groups {
                " (--dedupe-groups keeps them together)"
            } else {
                ""
            }
        );
    }
    match outcome {
        WriteOutcome::UpToDate => {
            let _ = writeln!(
                s,
                "\nsplit in {} is up to date (same inputs and parameters): nothing written",
                out.display()
            );
        }
        WriteOutcome::Written(files) => {
            let names: Vec<String> = files
                .iter()
                .filter_map(|f| f.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect();
            let _ = writeln!(s, "\nwrote {} to {}", names.join(", "), out.display());
        }
    }
    s
}
