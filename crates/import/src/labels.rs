//! From annotation files to label text: every pair's annotation read (in parallel), the class
//! names found, and each pair's objects turned into YOLO rows, with the counts of each side and
//! every object or file left out recorded in the report.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use rayon::prelude::*;

use crate::plan::{Pair, relative};
use crate::report::{
    ImportReport, MalformedKind, MalformedObject, Side, SideCounts, UnusableAnnotation,
};
use crate::voc::{self, AnnotationError, YoloBox};
use crate::{Progress, Stage};

/// One object of an annotation file: its 1-based index and line, and its class name and box
/// (and whether it was clipped), or why it is malformed.
pub(crate) struct Converted {
    index: usize,
    line: u32,
    result: Result<(String, YoloBox, bool), voc::Problem>,
}

/// An annotation file read and checked against its image's size.
pub(crate) struct Annotated {
    size_from_image: bool,
    objects: Vec<Converted>,
}

/// What reading a pair's annotation gave: `None` for a pair without annotation file.
pub(crate) type Read = Option<Result<Annotated, AnnotationError>>;

/// A pair to write with its label text (`None`: background, no label file).
pub(crate) type Job<'a> = (&'a Pair, Option<String>);

/// Reads the annotation of every pair that has one, in parallel; one result per pair, in order.
pub(crate) fn read_all(pairs: &[Pair], progress: &(dyn Fn(Progress) + Sync)) -> Vec<Read> {
    progress(Progress::Begin {
        stage: Stage::Read,
        total: pairs.iter().filter(|p| p.xml.is_some()).count() as u64,
    });
    pairs
        .par_iter()
        .map(|pair| {
            pair.xml.as_deref().map(|xml| {
                let annotated = read_annotation(xml, &pair.rgb);
                progress(Progress::Step);
                annotated
            })
        })
        .collect()
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

/// The class names of all well-formed objects, once each, sorted.
pub(crate) fn names_found(read: &[Read]) -> Vec<String> {
    read.iter()
        .flatten()
        .flatten()
        .flat_map(|a| &a.objects)
        .filter_map(|o| o.result.as_ref().ok().map(|(name, _, _)| name.clone()))
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect()
}

/// The pairs to write, with their label text (ids from `names`), in pair order. Counts each
/// kept pair and box on its side of `report`; pairs with an unusable annotation are left out
/// and listed, as are objects left out of the labels (both lists sorted by file).
pub(crate) fn label_jobs<'a>(
    pairs: &'a [Pair],
    read: Vec<Read>,
    names: &[String],
    root: &Path,
    report: &mut ImportReport,
) -> Vec<Job<'a>> {
    let class_ids: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut jobs = Vec::new();
    for (pair, annotated) in pairs.iter().zip(read) {
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
        let text = label_text(
            annotated.objects,
            &class_ids,
            &xml,
            counts,
            &mut report.malformed,
        );
        jobs.push((pair, Some(text)));
    }
    report
        .malformed
        .sort_by(|a, b| (&a.file, a.object).cmp(&(&b.file, b.object)));
    report.unusable.sort_by(|a, b| a.file.cmp(&b.file));
    jobs
}

/// The YOLO rows (`class cx cy w h`) of the objects of annotation file `xml`, counted in
/// `counts`; malformed objects and objects of unknown class are added to `malformed` instead.
fn label_text(
    objects: Vec<Converted>,
    class_ids: &HashMap<&str, usize>,
    xml: &Path,
    counts: &mut SideCounts,
    malformed: &mut Vec<MalformedObject>,
) -> String {
    let mut text = String::new();
    for Converted {
        index,
        line,
        result,
    } in objects
    {
        match result.and_then(|object| with_class_id(object, class_ids)) {
            Ok((id, b, clipped)) => {
                let _ = writeln!(text, "{id} {:.6} {:.6} {:.6} {:.6}", b.cx, b.cy, b.w, b.h);
                counts.boxes += 1;
                counts.clipped_boxes += usize::from(clipped);
            }
            Err((kind, reason)) => malformed.push(MalformedObject {
                file: xml.to_path_buf(),
                object: index,
                line,
                kind,
                reason,
            }),
        }
    }
    text
}

/// An object's class name replaced by its id, or an unknown-class problem.
fn with_class_id(
    (name, b, clipped): (String, YoloBox, bool),
    class_ids: &HashMap<&str, usize>,
) -> Result<(usize, YoloBox, bool), voc::Problem> {
    match class_ids.get(name.as_str()) {
        Some(&id) => Ok((id, b, clipped)),
        None => Err((
            MalformedKind::UnknownClass,
            format!("class `{name}` is not in the given names"),
        )),
    }
}
