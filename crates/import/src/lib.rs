//! The import stage: Pascal VOC style RGB + IR datasets into fusekit's layout.
//!
//! A source ([`Layout`]) has one `<stem>.xml` annotation file per image in an annotation
//! folder, and RGB and IR image folders with the same relative paths and file names.
//! [`Layout::llvip`] describes LLVIP as distributed (`Annotations/`, `visible/`, `infrared/`,
//! its `train`/`test` folders becoming train/val); [`Layout::voc`] a generic VOC folder split by
//! `ImageSets/Main` lists. [`import`] writes
//!
//! ```text
//! OUT/images/{train,val}/…     RGB images, hard-linked where possible, else copied
//! OUT/imagesIR/{train,val}/…   IR partners, same relative paths
//! OUT/labels/{train,val}/….txt YOLO rows `class cx cy w h`, normalised by each image's size
//! OUT/data.yaml                written last, atomically: its presence marks a complete import
//! ```
//!
//! Box coordinates are read as pixel edges (as LLVIP's own converter does) and normalised by
//! the annotation's `<size>`, or by the image header when that is missing or zero. Nothing is
//! dropped silently: malformed objects, unusable annotation files, images without IR partner,
//! annotations without image, same-stem clashes and split-list mismatches are all listed in
//! the [`ImportReport`]; only problems that stop the whole import are [`ImportError`]s.
//! Images without an annotation file become background pairs without a label file.

#![warn(missing_docs)]

mod error;
mod human;
mod labels;
mod layout;
mod plan;
mod report;
mod voc;
mod write;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use error::ImportError;
pub use layout::{Layout, SplitRule, VOC_ANNOTATIONS, VOC_IR, VOC_RGB};
pub use report::{
    ImportReport, ListedMissing, MalformedKind, MalformedObject, Side, SideCounts, Transfer,
    TransferMode, UnusableAnnotation,
};

use labels::Job;
use plan::Plan;
use write::{Placed, Placer};

/// Choices for an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Class names by id. Objects of other classes are reported as malformed. When `None`,
    /// the names of all well-formed objects are used, sorted.
    pub names: Option<Vec<String>>,
    /// Write into a non-empty output folder, replacing the files this import writes there
    /// (and its `data.yaml`); nothing else is changed or deleted.
    pub force: bool,
    /// Hard-link images where possible, or always copy.
    pub transfer: TransferMode,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            names: None,
            force: false,
            transfer: TransferMode::Link,
        }
    }
}

/// A phase of the import, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading annotation files (one step each).
    Read,
    /// Placing images and writing labels (one step per pair).
    Write,
}

impl Stage {
    /// A short name for display.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Write => "write",
        }
    }
}

/// A progress event; the callback may be called from several threads at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A stage starts with this many steps.
    Begin {
        /// The stage.
        stage: Stage,
        /// Its number of steps.
        total: u64,
    },
    /// One step of the current stage is done.
    Step,
}

/// Imports `layout` into `out` (see the crate documentation). Returns what was done and
/// found; the error cases write nothing, except I/O failures while writing.
pub fn import(
    layout: &Layout,
    out: &Path,
    options: &ImportOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ImportReport, ImportError> {
    let given = options.names.as_deref().map(check_names).transpose()?;
    let sources = plan::source_dirs(layout)?;
    write::check_out(out, &sources, options.force)?;
    let mut plan = plan::plan(layout, &sources)?;
    let pairs = std::mem::take(&mut plan.pairs);
    let images = plan.images;

    let read = labels::read_all(&pairs, progress);
    let names_given = given.is_some();
    let names = given.unwrap_or_else(|| labels::names_found(&read));
    let mut report = empty_report(layout, out, options, &names, names_given, plan);
    let jobs = labels::label_jobs(&pairs, read, &names, &layout.root, &mut report);
    if jobs.is_empty() {
        return Err(ImportError::Nothing {
            source_dir: layout.root.clone(),
            details: nothing_details(&report, images),
        });
    }

    write_pairs(out, &jobs, options.transfer, progress, &mut report)?;
    write::write_data_yaml(out, &names, &data_yaml_header(layout))?;
    Ok(report)
}

/// The report before anything is counted: where from and to, the split rule and class names,
/// and the problems `plan` found while pairing files.
fn empty_report(
    layout: &Layout,
    out: &Path,
    options: &ImportOptions,
    names: &[String],
    names_given: bool,
    plan: Plan,
) -> ImportReport {
    ImportReport {
        preset: layout.preset.clone(),
        source: layout.root.clone(),
        out: out.to_path_buf(),
        data_yaml: out.join(fusekit_dataset::DATA_YAML),
        split: layout.split.clone(),
        names: names.to_vec(),
        names_given,
        train: SideCounts::default(),
        val: SideCounts::default(),
        transfer: Transfer {
            mode: options.transfer,
            linked: 0,
            copied: 0,
            link_error: None,
        },
        malformed: Vec::new(),
        unusable: Vec::new(),
        missing_ir: plan.missing_ir,
        orphan_annotations: plan.orphan_annotations,
        stem_clashes: plan.stem_clashes,
        listed_missing: plan.listed_missing,
        listed_twice: plan.listed_twice,
        unlisted: plan.unlisted,
        stale: Vec::new(),
    }
}

/// Creates `out` and removes the data yaml of an earlier import (so an interrupted run looks
/// incomplete), then places every pair's images and writes its label file, in parallel.
/// Records in `report` how images were placed and which files below `out` were not written.
fn write_pairs(
    out: &Path,
    jobs: &[Job],
    transfer: TransferMode,
    progress: &(dyn Fn(Progress) + Sync),
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    std::fs::create_dir_all(out).map_err(error::io_error(out))?;
    write::remove_data_yaml(out)?;
    progress(Progress::Begin {
        stage: Stage::Write,
        total: jobs.len() as u64,
    });
    let placer = Placer::new(transfer);
    let written: Vec<Vec<(PathBuf, Option<Placed>)>> = jobs
        .par_iter()
        .map(|(pair, label)| {
            let files = write::write_pair(out, pair, label.as_deref(), &placer)?;
            progress(Progress::Step);
            Ok(files)
        })
        .collect::<Result<_, ImportError>>()?;
    let mut produced = HashSet::new();
    for (path, placed) in written.into_iter().flatten() {
        match placed {
            Some(Placed::Linked) => report.transfer.linked += 1,
            Some(Placed::Copied) => report.transfer.copied += 1,
            None => {}
        }
        produced.insert(path);
    }
    report.transfer.link_error = placer.into_link_error();
    report.stale = write::stale_files(out, &produced);
    Ok(())
}

/// The comment lines at the top of the data yaml: which import wrote it and how to read it.
fn data_yaml_header(layout: &Layout) -> String {
    format!(
        "# Written by `fusekit import {}` from {}.\n# Labels: YOLO rows normalised by each image's own size; an image without label file is background.\n",
        layout.preset,
        layout.root.display()
    )
}

/// Trims and checks given class names: at least one, none empty, no duplicates.
fn check_names(names: &[String]) -> Result<Vec<String>, ImportError> {
    let names: Vec<String> = names.iter().map(|n| n.trim().to_owned()).collect();
    if names.is_empty() || names.iter().any(String::is_empty) {
        return Err(ImportError::Names(
            "give one or more non-empty names, e.g. `person,car`".to_owned(),
        ));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = names.iter().find(|n| !seen.insert(n.as_str())) {
        return Err(ImportError::Names(format!("`{dup}` is given twice")));
    }
    Ok(names)
}

/// Why no pair was left, for [`ImportError::Nothing`].
fn nothing_details(report: &ImportReport, images: usize) -> String {
    if images == 0 {
        return "no RGB images found".to_owned();
    }
    let clashing: usize = report.stem_clashes.iter().map(Vec::len).sum();
    format!(
        "{images} RGB images found, none importable ({} without IR partner, {} with an unusable annotation, {clashing} sharing a stem, {} in no split list, {} in both)",
        report.missing_ir.len(),
        report.unusable.len(),
        report.unlisted.len(),
        report.listed_twice.len()
    )
}
