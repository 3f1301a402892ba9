//! The split stage: deterministic, stratified, leak-free train / val / test lists.

use std::path::{Path, PathBuf};

use fusekit_lint::LevelSelectors;
use fusekit_split::{GroupBy, Manifest, SplitParams, Stratify, WriteOutcome, plan, write_split};
use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::{Progress, StageError, lint_first, usability_options};

/// The split knobs: a pipeline file's `split:` section, and the flags of `fusekit split`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Share for validation (of boxes per class; of pairs for background and
    /// `stratify: none`).
    #[serde(default = "default_val")]
    pub val: f64,
    /// Share for test.
    #[serde(default)]
    pub test: f64,
    /// Seed: the same inputs and seed give byte-identical files on any machine.
    #[serde(default)]
    pub seed: u64,
    /// Group pairs by a regex on the file stem (its first capture group, else the whole match).
    #[serde(default)]
    pub group: Option<String>,
    /// Group pairs by the folder holding the RGB image.
    #[serde(default)]
    pub group_by_folder: bool,
    /// Balance per-class box counts and background share, or only pair counts.
    #[serde(default)]
    pub stratify: Stratify,
    /// Search near-identical IR pictures across groups (decodes every IR image).
    #[serde(default = "default_true")]
    pub near_dups: bool,
    /// At most this many of 64 perceptual-hash bits differ between near-duplicates.
    #[serde(default = "default_near_dup_bits")]
    pub near_dup_bits: u32,
    /// Keep near-duplicates on one side too.
    #[serde(default)]
    pub dedupe_groups: bool,
    /// Keep the dataset's own lists (e.g. LLVIP's official split) instead of writing new
    /// ones; the other keys are unused.
    #[serde(default)]
    pub keep: bool,
}

fn default_val() -> f64 {
    0.2
}
fn default_true() -> bool {
    true
}
fn default_near_dup_bits() -> u32 {
    4
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            val: default_val(),
            test: 0.0,
            seed: 0,
            group: None,
            group_by_folder: false,
            stratify: Stratify::Classes,
            near_dups: true,
            near_dup_bits: default_near_dup_bits(),
            dedupe_groups: false,
            keep: false,
        }
    }
}

impl Settings {
    /// Checks the shares and the group regex; returns the grouping.
    pub fn check(&self) -> Result<GroupBy, StageError> {
        let shares_valid = (0.0..1.0).contains(&self.val)
            && (0.0..1.0).contains(&self.test)
            && self.val + self.test < 1.0;
        if !shares_valid {
            return Err(StageError::Invalid(format!(
                "val and test must be in [0, 1) and leave a share for train (got {} and {})",
                self.val, self.test
            )));
        }
        match (&self.group, self.group_by_folder) {
            (Some(_), true) => Err(StageError::Invalid(
                "group and group_by_folder cannot both be given".into(),
            )),
            (Some(pattern), false) => Regex::new(pattern)
                .map(GroupBy::Stem)
                .map_err(|e| StageError::Invalid(format!("group `{pattern}`: {e}"))),
            (None, true) => Ok(GroupBy::Folder),
            (None, false) => Ok(GroupBy::Pair),
        }
    }

    fn split_params(&self) -> SplitParams {
        SplitParams {
            val: self.val,
            test: self.test,
            seed: self.seed,
            stratify: self.stratify,
            near_dup_bits: self.near_dups.then_some(self.near_dup_bits),
            dedupe_near: self.dedupe_groups,
        }
    }
}

/// Everything a split needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// A data yaml, or a dataset folder; all its pairs are split.
    pub data: PathBuf,
    /// Class names for a folder without data.yaml.
    pub names: Option<Vec<String>>,
    /// Lint levels that decide which pairs are left out (those with error-level findings).
    pub levels: LevelSelectors,
    /// Where the files go (default: the dataset root).
    pub out: Option<PathBuf>,
    /// Replace list files this stage did not write (the old ones are kept as .bak).
    pub force: bool,
    /// Shares, seed, grouping, stratification.
    pub settings: Settings,
}

/// What the split stage did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Written {
    /// The files were written.
    Written,
    /// The split on disk was current; nothing was written.
    UpToDate,
    /// `keep`: the dataset's own lists are used.
    Kept,
}

/// A finished split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Written, up to date, or kept.
    pub outcome: Written,
    /// The output folder.
    pub out: PathBuf,
    /// The dataset description the next stages read: `out/split.yaml`, or with `keep` the
    /// dataset's own.
    pub data: PathBuf,
    /// The files written (empty when up to date or kept).
    pub written: Vec<PathBuf>,
    /// The manifest (`split.json`); `None` when kept.
    pub manifest: Option<Manifest>,
}

/// Lints, plans and writes (unless current) the split.
pub fn run(params: &Params, progress: &dyn Progress) -> Result<Outcome, StageError> {
    let settings = &params.settings;
    if settings.keep {
        progress.note(&format!(
            "split: keeping the lists of {} (split.keep)",
            params.data.display()
        ));
        return Ok(Outcome {
            outcome: Written::Kept,
            out: params.data.clone(),
            data: params.data.clone(),
            written: Vec::new(),
            manifest: None,
        });
    }
    let group_by = settings.check()?;
    let split_params = settings.split_params();
    let options = usability_options(&params.levels)?;
    let (dataset, lint_run) = lint_first(&params.data, params.names.clone(), &options, progress)?;
    let usable = lint_run.pairs.iter().filter(|p| p.usable).count();
    if usable == 0 {
        return Err(StageError::Invalid(format!(
            "{}: no usable pairs to split ({} pairs, all with lint errors; run `fusekit lint`)",
            params.data.display(),
            lint_run.pairs.len()
        )));
    }
    let hashed = if split_params.near_dup_bits.is_some() {
        usable as u64
    } else {
        0
    };
    progress.begin("hash IR", hashed, "pairs");
    let plan = plan(&dataset, &lint_run, &group_by, &split_params, &|| {
        progress.advance()
    });
    progress.end();
    let out = params.out.clone().unwrap_or_else(|| dataset.root.clone());
    let (written, manifest) = write_split(
        &dataset,
        &plan,
        &split_params,
        &group_by,
        &out,
        params.force,
    )?;
    let (outcome, written) = match written {
        WriteOutcome::UpToDate => (Written::UpToDate, Vec::new()),
        WriteOutcome::Written(files) => (Written::Written, files),
    };
    Ok(Outcome {
        outcome,
        data: out.join(fusekit_split::SPLIT_YAML),
        out,
        written,
        manifest: Some(manifest),
    })
}

impl Outcome {
    /// The human report: sides, classes, what was left out, joined or written.
    pub fn human(&self, data: &Path) -> String {
        use std::fmt::Write as _;
        let outcome = self;
        let data = data.display();
        let mut s = String::new();
        let out = &outcome.out;
        let Some(m) = &outcome.manifest else {
            let _ = writeln!(s, "fusekit split {data}: the dataset's own lists are kept");
            return s;
        };
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
        match outcome.outcome {
            Written::Kept => {}
            Written::UpToDate => {
                let _ = writeln!(
                    s,
                    "\nsplit in {} is up to date (same inputs and parameters): nothing written",
                    out.display()
                );
            }
            Written::Written => {
                let names: Vec<String> = outcome
                    .written
                    .iter()
                    .filter_map(|f| f.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect();
                let _ = writeln!(s, "\nwrote {} to {}", names.join(", "), out.display());
            }
        }
        s
    }
}
