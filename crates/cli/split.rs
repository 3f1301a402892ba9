//! `fusekit split`: deterministic, stratified, leak-free train/val/test lists.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use fusekit_split::Stratify;
use fusekit_stages::split::{Params, Settings};

use crate::lint::config_levels;
use crate::output::Format;
use crate::progress::Bars;

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
    /// Balance per-class box counts and background share across sides (`classes`), or only
    /// pair counts (`none`).
    #[arg(long, default_value = "classes")]
    stratify: Stratify,
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

impl SplitArgs {
    /// The stage's parameters; the config file's `[lint]` levels decide which pairs are out.
    fn params(&self) -> anyhow::Result<Params> {
        Ok(Params {
            data: self.data.clone(),
            names: self.names.clone(),
            levels: config_levels(&self.data, self.config.as_deref())?,
            out: self.out.clone(),
            force: self.force,
            settings: Settings {
                val: self.val,
                test: self.test,
                seed: self.seed,
                group: self.group.clone(),
                group_by_folder: self.group_by_folder,
                stratify: self.stratify,
                near_dups: !self.no_near_dups,
                near_dup_bits: self.near_dup_bits,
                dedupe_groups: self.dedupe_groups,
                keep: false,
            },
        })
    }
}

/// Lints, plans, writes (unless current) and reports the split.
pub fn run(args: &SplitArgs) -> anyhow::Result<ExitCode> {
    let outcome = fusekit_stages::split::run(&args.params()?, &Bars::default())?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
        Format::Human => print!("{}", outcome.human(&args.data)),
    }
    Ok(ExitCode::SUCCESS)
}
