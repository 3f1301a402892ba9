//! The split stage: deterministic, stratified, leak-free train/val/test splits.
//!
//! [`plan`] turns a linted dataset into [`SplitRecord`]s (usable pairs only, with group keys,
//! box counts, content hashes and IR perceptual hashes) and [`assign`]s each to a side;
//! [`write_split`] writes `train.txt`, `val.txt`, `test.txt`, a derived data yaml and
//! `split.json` atomically, or reports that the split on disk is already current.

mod assign;
mod output;

use std::path::Path;

use fusekit_dataset::{Dataset, perceptual_hash};
use fusekit_lint::LintRun;
use rayon::prelude::*;
use regex::Regex;

pub use assign::{
    Assignment, NearDuplicate, PerSide, Side, SplitParams, SplitRecord, SplitStats, Stratify,
    assign,
};
pub use output::{
    ClassSplit, Manifest, NearDuplicatePair, SPLIT_JSON, SPLIT_YAML, SideCounts, SplitError,
    WriteOutcome, write_split,
};

/// How pairs are grouped; a group is never split.
#[derive(Debug, Clone)]
pub enum GroupBy {
    /// Every pair is its own group.
    Pair,
    /// The first capture group (or the whole match) of a regex on the file stem; pairs whose
    /// stem does not match form groups of one.
    Stem(Regex),
    /// The folder holding the RGB image.
    Folder,
}

impl GroupBy {
    /// The group key of an RGB image path relative to the dataset root, and whether a regex
    /// matched (always true for the other modes).
    pub fn key(&self, path: &str) -> (String, bool) {
        let (folder, file) = path.rsplit_once('/').unwrap_or(("", path));
        match self {
            GroupBy::Pair => (path.to_owned(), true),
            GroupBy::Folder => (format!("{folder}/"), true),
            GroupBy::Stem(regex) => {
                let stem = file.rsplit_once('.').map_or(file, |(stem, _)| stem);
                match regex.captures(stem) {
                    Some(caps) => {
                        let m = caps
                            .get(1)
                            .or_else(|| caps.get(0))
                            .expect("a match has group 0");
                        (format!("group:{}", m.as_str()), true)
                    }
                    None => (path.to_owned(), false),
                }
            }
        }
    }

    /// How the mode is written in `split.json`.
    pub fn describe(&self) -> String {
        match self {
            GroupBy::Pair => "none".into(),
            GroupBy::Folder => "folder".into(),
            GroupBy::Stem(regex) => format!("regex {}", regex.as_str()),
        }
    }
}

/// A planned split: what was split, what was left out, and the sides.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The usable pairs, in path order.
    pub records: Vec<SplitRecord>,
    /// Pairs lint found errors in (relative RGB paths): never split.
    pub excluded: Vec<String>,
    /// Pairs whose stem the group regex did not match.
    pub ungrouped: usize,
    /// The sides.
    pub assignment: Assignment,
}

/// Builds the records from a lint run of `dataset` and assigns them. `progress` is called once
/// per IR image hashed (only when near-duplicates are searched).
pub fn plan(
    dataset: &Dataset,
    run: &LintRun,
    group_by: &GroupBy,
    params: &SplitParams,
    progress: &(dyn Fn() + Sync),
) -> Plan {
    let relative = |path: &Path| {
        let rel = dataset.relative(path);
        rel.components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    };
    let excluded = run
        .pairs
        .iter()
        .filter(|p| !p.usable)
        .map(|p| relative(&p.rgb))
        .collect();
    let usable: Vec<_> = run.pairs.iter().filter(|p| p.usable).collect();
    let records: Vec<(SplitRecord, bool)> = usable
        .par_iter()
        .map(|pair| {
            let path = relative(&pair.rgb);
            let (group, matched) = group_by.key(&path);
            let ir_hash = match (params.near_dup_bits, &pair.ir) {
                (Some(_), Some(ir)) => {
                    let hash = perceptual_hash(ir).ok();
                    progress();
                    hash
                }
                _ => None,
            };
            let boxes = pair
                .boxes
                .iter()
                .map(|(&class, &n)| (class, n as u32))
                .collect();
            (
                SplitRecord {
                    path,
                    group,
                    boxes,
                    content: pair.content,
                    ir_hash,
                },
                matched,
            )
        })
        .collect();
    let ungrouped = records.iter().filter(|(_, matched)| !matched).count();
    let records: Vec<SplitRecord> = records.into_iter().map(|(record, _)| record).collect();
    let assignment = assign(&records, params);
    Plan {
        records,
        excluded,
        ungrouped,
        assignment,
    }
}
