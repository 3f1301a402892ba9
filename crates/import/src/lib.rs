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
mod layout;
mod plan;
mod report;
mod voc;
mod write;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use error::ImportError;
pub use layout::{Layout, SplitRule, VOC_ANNOTATIONS, VOC_IR, VOC_RGB};
pub use report::{
    ImportReport, ListedMissing, MalformedKind, MalformedObject, Side, SideCounts, Transfer,
    TransferMode, UnusableAnnotation,
};

use plan::{Pair, relative};
use voc::{AnnotationError, YoloBox};
use write::{IR_DIR, LABEL_DIR, Placed, Placer, RGB_DIR};

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

/// One object of an annotation file: its 1-based index and line, and its class name and box
/// (and whether it was clipped), or why it is malformed.
struct Converted {
    index: usize,
    line: u32,
    result: Result<(String, YoloBox, bool), voc::Problem>,
}

/// An annotation file read and checked against its image's size.
struct Annotated {
    size_from_image: bool,
    objects: Vec<Converted>,
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
    let plan = plan::plan(layout, &sources)?;
    let root = &layout.root;

    progress(Progress::Begin {
        stage: Stage::Read,
        total: plan.pairs.iter().filter(|p| p.xml.is_some()).count() as u64,
    });
    let read: Vec<Option<Result<Annotated, AnnotationError>>> = plan
        .pairs
        .par_iter()
        .map(|pair| {
            pair.xml.as_deref().map(|xml| {
                let annotated = read_annotation(xml, &pair.rgb);
                progress(Progress::Step);
                annotated
            })
        })
        .collect();

    let names: Vec<String> = match &given {
        Some(names) => names.clone(),
        None => read
            .iter()
            .flatten()
            .flatten()
            .flat_map(|a| &a.objects)
            .filter_map(|o| o.result.as_ref().ok().map(|(name, _, _)| name.clone()))
            .collect::<BTreeSet<String>>()
            .into_iter()
            .collect(),
    };
    let class_ids: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();

    let mut report = ImportReport {
        preset: layout.preset.clone(),
        source: root.clone(),
        out: out.to_path_buf(),
        data_yaml: out.join(fusekit_dataset::DATA_YAML),
        split: layout.split.clone(),
        names: names.clone(),
        names_given: given.is_some(),
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
    };
    // Each kept pair with its label text (`None`: background, no label file).
    let mut jobs: Vec<(&Pair, Option<String>)> = Vec::new();
    for (pair, annotated) in plan.pairs.iter().zip(read) {
        let counts = match pair.side {
            Side::Train => &mut report.train,
            Side::Val => &mut report.val,
        };
        let Some(annotated) = annotated else {
            counts.pairs += 1;
            counts.background += 1;
            jobs.push((pair, None));
            continue;
        };
        let xml = relative(pair.xml.as_deref().unwrap_or(Path::new("")), root);
        let annotated = match annotated {
            Ok(annotated) => annotated,
            Err(e) => {
                report.unusable.push(UnusableAnnotation {
                    file: xml,
                    line: e.line(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        counts.pairs += 1;
        counts.labelled += 1;
        counts.size_from_image += usize::from(annotated.size_from_image);
        let mut text = String::new();
        for Converted {
            index,
            line,
            result,
        } in annotated.objects
        {
            let checked =
                result.and_then(|(name, b, clipped)| match class_ids.get(name.as_str()) {
                    Some(&id) => Ok((id, b, clipped)),
                    None => Err((
                        MalformedKind::UnknownClass,
                        format!("class `{name}` is not in the given names"),
                    )),
                });
            match checked {
                Ok((id, b, clipped)) => {
                    let _ = writeln!(text, "{id} {:.6} {:.6} {:.6} {:.6}", b.cx, b.cy, b.w, b.h);
                    counts.boxes += 1;
                    counts.clipped_boxes += usize::from(clipped);
                }
                Err((kind, reason)) => report.malformed.push(MalformedObject {
                    file: xml.clone(),
                    object: index,
                    line,
                    kind,
                    reason,
                }),
            }
        }
        jobs.push((pair, Some(text)));
    }
    report
        .malformed
        .sort_by(|a, b| (&a.file, a.object).cmp(&(&b.file, b.object)));
    report.unusable.sort_by(|a, b| a.file.cmp(&b.file));

    if jobs.is_empty() {
        return Err(ImportError::Nothing {
            source_dir: root.clone(),
            details: nothing_details(&report, plan.images),
        });
    }

    std::fs::create_dir_all(out).map_err(error::io_error(out))?;
    write::remove_data_yaml(out)?;
    progress(Progress::Begin {
        stage: Stage::Write,
        total: jobs.len() as u64,
    });
    let placer = Placer::new(options.transfer);
    let written: Vec<Vec<(PathBuf, Option<Placed>)>> = jobs
        .par_iter()
        .map(|(pair, label)| {
            let side = pair.side.as_str();
            let rgb = out.join(RGB_DIR).join(side).join(&pair.rel);
            let ir_name = pair.ir.file_name().unwrap_or_default();
            let ir = out
                .join(IR_DIR)
                .join(side)
                .join(pair.rel.with_file_name(ir_name));
            let mut files = vec![
                (rgb.clone(), Some(placer.place(&pair.rgb, &rgb)?)),
                (ir.clone(), Some(placer.place(&pair.ir, &ir)?)),
            ];
            if let Some(text) = label {
                let path = out
                    .join(LABEL_DIR)
                    .join(side)
                    .join(pair.rel.with_extension("txt"));
                write::write_atomically(&path, text.as_bytes())?;
                files.push((path, None));
            }
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

    let header = format!(
        "# Written by `fusekit import {}` from {}.\n# Labels: YOLO rows normalised by each image's own size; an image without label file is background.\n",
        layout.preset,
        root.display()
    );
    write::write_data_yaml(out, &names, &header)?;
    Ok(report)
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

/// Reads an annotation and converts its boxes, with the size from the XML or the image.
fn read_annotation(xml: &Path, rgb: &Path) -> Result<Annotated, AnnotationError> {
    let file = voc::read_voc(xml)?;
    let (size, size_from_image) = match file.size {
        Some(size) => (size, false),
        None => {
            let size = image::image_dimensions(rgb).map_err(|e| AnnotationError::NoSize {
                image: rgb.to_path_buf(),
                cause: e.to_string(),
            })?;
            (size, true)
        }
    };
    let objects = file
        .objects
        .into_iter()
        .map(|o| {
            let converted = o.parsed.and_then(|b| {
                let (yolo, clipped) = voc::to_yolo(&b, size.0, size.1)?;
                Ok((b.name, yolo, clipped))
            });
            Converted {
                index: o.index,
                line: o.line,
                result: converted,
            }
        })
        .collect();
    Ok(Annotated {
        size_from_image,
        objects,
    })
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
