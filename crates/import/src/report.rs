//! What an import did and what it found: counts, problems, and how images were placed.

use std::path::PathBuf;

use serde::Serialize;

use crate::layout::SplitRule;
pub use crate::voc::MalformedKind;

/// A side of the imported dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// `images/train`.
    Train,
    /// `images/val`.
    Val,
}

impl Side {
    /// Both sides, train first.
    pub const ALL: [Side; 2] = [Side::Train, Side::Val];

    /// The folder name below `images/`, `imagesIR/` and `labels/`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Train => "train",
            Side::Val => "val",
        }
    }
}

/// Counts for one side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SideCounts {
    /// Pairs imported (RGB + IR images placed).
    pub pairs: usize,
    /// Pairs with an annotation file, so with a label file (possibly empty).
    pub labelled: usize,
    /// Pairs without an annotation file: background, no label file written.
    pub background: usize,
    /// Boxes written to label files.
    pub boxes: usize,
    /// Boxes at most one pixel outside the image, clipped to it (included in `boxes`).
    pub clipped_boxes: usize,
    /// Annotations without a usable `<size>`, normalised by the image header's size instead.
    pub size_from_image: usize,
}

/// How image files were placed: `link` tries hard links first, `copy` never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferMode {
    /// Hard links where the file system allows them, copies otherwise.
    Link,
    /// Always copies.
    Copy,
}

/// Image files placed in the output, by how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transfer {
    /// What was asked for.
    pub mode: TransferMode,
    /// Files hard-linked (RGB and IR counted separately).
    pub linked: usize,
    /// Files copied.
    pub copied: usize,
    /// Why hard linking failed (the first failure), when it was tried and fell back to copies.
    pub link_error: Option<String>,
}

/// An object left out of the labels, with where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MalformedObject {
    /// The annotation file, relative to the source root.
    pub file: PathBuf,
    /// The object's 1-based position among the file's `<object>` elements.
    pub object: usize,
    /// The 1-based line of its `<object>` tag.
    pub line: u32,
    /// The kind of problem.
    pub kind: MalformedKind,
    /// What is wrong, for people.
    pub reason: String,
}

/// An annotation file that could not be used at all; its pair was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnusableAnnotation {
    /// The annotation file, relative to the source root.
    pub file: PathBuf,
    /// The 1-based line the problem is at, for XML syntax errors.
    pub line: Option<u32>,
    /// What is wrong.
    pub reason: String,
}

/// A stem named in a split list with no RGB image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedMissing {
    /// The list file, relative to the source root when below it.
    pub list: PathBuf,
    /// The 1-based line.
    pub line: usize,
    /// The stem named there.
    pub stem: String,
}

/// Everything an import did and found, in deterministic order. Paths of source files are
/// relative to the source root, paths of output files relative to the output folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportReport {
    /// The preset used (`llvip`, `voc`).
    pub preset: String,
    /// The source root.
    pub source: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    /// The data yaml written (last, atomically).
    pub data_yaml: PathBuf,
    /// How pairs were assigned to train and val.
    pub split: SplitRule,
    /// Class names by id, as written to the data yaml.
    pub names: Vec<String>,
    /// Whether `names` were given (else discovered from `<name>` tags, sorted).
    pub names_given: bool,
    /// Counts for `train`.
    pub train: SideCounts,
    /// Counts for `val`.
    pub val: SideCounts,
    /// How image files were placed.
    pub transfer: Transfer,
    /// Objects left out of the labels.
    pub malformed: Vec<MalformedObject>,
    /// Annotation files that could not be used; their pairs were skipped.
    pub unusable: Vec<UnusableAnnotation>,
    /// RGB images without an IR partner; skipped.
    pub missing_ir: Vec<PathBuf>,
    /// Annotation files whose stem matches no RGB image.
    pub orphan_annotations: Vec<PathBuf>,
    /// RGB images sharing a stem (so one annotation file); all of them skipped.
    pub stem_clashes: Vec<Vec<PathBuf>>,
    /// Split-list entries with no RGB image.
    pub listed_missing: Vec<ListedMissing>,
    /// Stems listed for both train and val; skipped.
    pub listed_twice: Vec<String>,
    /// RGB images in no split list while a train list was used; skipped.
    pub unlisted: Vec<PathBuf>,
    /// Files below the output's `images/`, `imagesIR/` and `labels/` that this import did not
    /// write (left from earlier runs or put there by hand); left in place.
    pub stale: Vec<PathBuf>,
}

impl ImportReport {
    /// Counts for a side.
    pub fn side(&self, side: Side) -> &SideCounts {
        match side {
            Side::Train => &self.train,
            Side::Val => &self.val,
        }
    }

    /// Pairs imported on both sides.
    pub fn pairs(&self) -> usize {
        self.train.pairs + self.val.pairs
    }

    /// The number of reported problems (objects, files, pairs, list entries), clipped boxes
    /// not included.
    pub fn problem_count(&self) -> usize {
        self.malformed.len()
            + self.unusable.len()
            + self.missing_ir.len()
            + self.orphan_annotations.len()
            + self.stem_clashes.iter().map(Vec::len).sum::<usize>()
            + self.listed_missing.len()
            + self.listed_twice.len()
            + self.unlisted.len()
            + self.stale.len()
    }
}
