//! Finding the source pairs: RGB images, their IR partners, annotation files and sides.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use fusekit_dataset::{images_by_stem, is_image_path};

use crate::error::ImportError;
use crate::layout::{Layout, SplitRule};
use crate::report::{ListedMissing, Side};

/// One pair to import.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub side: Side,
    /// The RGB image.
    pub rgb: PathBuf,
    /// Its IR partner.
    pub ir: PathBuf,
    /// Its annotation file, if any.
    pub xml: Option<PathBuf>,
    /// The RGB path below the side folder of the output (`images/<side>/<rel>`).
    pub rel: PathBuf,
}

/// The pairs of a source and what kept other files from pairing up.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub pairs: Vec<Pair>,
    /// RGB images found, including those skipped below.
    pub images: usize,
    pub missing_ir: Vec<PathBuf>,
    pub orphan_annotations: Vec<PathBuf>,
    pub stem_clashes: Vec<Vec<PathBuf>>,
    pub listed_missing: Vec<ListedMissing>,
    pub listed_twice: Vec<String>,
    pub unlisted: Vec<PathBuf>,
}

/// An RGB image as found by the walk.
struct Found {
    path: PathBuf,
    /// The folder it was found below (`<rgb>/<sub>`), and its IR counterpart.
    ir_root: PathBuf,
    /// Its path below that folder.
    rel: PathBuf,
    /// Its side, when the folder decides it.
    side: Option<Side>,
    stem: OsString,
}

/// `path` relative to `root` when below it, else as given.
pub(crate) fn relative(path: &Path, root: &Path) -> PathBuf {
    path.strip_prefix(root).unwrap_or(path).to_path_buf()
}

/// The source folders (annotations, RGB, IR) of `layout`, checked to exist.
pub(crate) fn source_dirs(layout: &Layout) -> Result<[PathBuf; 3], ImportError> {
    let check = |folder: &Path, role: &'static str| {
        let path = layout.dir(folder);
        if path.is_dir() {
            Ok(path)
        } else {
            Err(ImportError::MissingFolder { role, path })
        }
    };
    Ok([
        check(&layout.annotations, "annotation")?,
        check(&layout.rgb, "RGB image")?,
        check(&layout.ir, "IR image")?,
    ])
}

/// Walks the source (its checked `[annotation, RGB, IR]` folders) and pairs its files. Problems with single files are collected, never
/// returned as errors; only a missing folder or unreadable split list is an error.
pub(crate) fn plan(layout: &Layout, sources: &[PathBuf; 3]) -> Result<Plan, ImportError> {
    let [ann_dir, rgb_dir, ir_dir] = sources;
    let root = &layout.root;
    let mut found = Vec::new();
    let mut walk_side = |sub: &Path, side: Option<Side>| {
        let rgb_root = rgb_dir.join(sub);
        for path in walk_images(&rgb_root) {
            found.push(Found {
                rel: relative(&path, &rgb_root),
                stem: path.file_stem().unwrap_or_default().to_os_string(),
                ir_root: ir_dir.join(sub),
                path,
                side,
            });
        }
    };
    let lists = match &layout.split {
        SplitRule::Folders { train, val } => {
            for (subs, side) in [(train, Side::Train), (val, Side::Val)] {
                for sub in subs {
                    walk_side(Path::new(sub), Some(side));
                }
            }
            None
        }
        SplitRule::Lists { train, val } => {
            walk_side(Path::new(""), None);
            let read = |list: &Option<PathBuf>| list.as_deref().map(read_list).transpose();
            Some((read(train)?, read(val)?))
        }
    };

    let mut plan = Plan {
        images: found.len(),
        ..Plan::default()
    };
    let mut by_stem: BTreeMap<&OsString, Vec<&Found>> = BTreeMap::new();
    for image in &found {
        by_stem.entry(&image.stem).or_default().push(image);
    }
    plan.stem_clashes = by_stem
        .values()
        .filter(|images| images.len() > 1)
        .map(|images| images.iter().map(|f| relative(&f.path, root)).collect())
        .collect();

    let annotations = annotation_index(ann_dir);
    plan.orphan_annotations = annotations
        .iter()
        .filter(|(stem, _)| !by_stem.contains_key(stem))
        .map(|(_, path)| relative(path, root))
        .collect();

    let sides = lists.map(|(train, val)| {
        let found_stems: HashSet<String> = by_stem
            .keys()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        for entries in [&train, &val].into_iter().flatten() {
            plan.listed_missing.extend(
                entries
                    .entries
                    .iter()
                    .filter(|(stem, _)| !found_stems.contains(stem))
                    .map(|(stem, line)| ListedMissing {
                        list: relative(&entries.file, root),
                        line: *line,
                        stem: stem.clone(),
                    }),
            );
        }
        ListSides {
            train: train.map(|t| t.stems()),
            val: val.map(|v| v.stems()).unwrap_or_default(),
        }
    });

    let mut ir_folders = FolderIndex::default();
    for image in found.iter().filter(|f| by_stem[&f.stem].len() == 1) {
        let side = match (&sides, image.side) {
            (_, Some(side)) => side,
            (None, None) => Side::Train,
            (Some(sides), None) => {
                let stem = image.stem.to_string_lossy();
                match sides.side(&stem) {
                    Ok(Some(side)) => side,
                    Ok(None) => {
                        plan.unlisted.push(relative(&image.path, root));
                        continue;
                    }
                    Err(()) => {
                        plan.listed_twice.push(stem.into_owned());
                        continue;
                    }
                }
            }
        };
        let Some(ir) = ir_folders.partner(&image.ir_root.join(&image.rel)) else {
            plan.missing_ir.push(relative(&image.path, root));
            continue;
        };
        plan.pairs.push(Pair {
            side,
            rgb: image.path.clone(),
            ir,
            xml: annotations.get(&image.stem).cloned(),
            rel: image.rel.clone(),
        });
    }
    Ok(plan)
}

/// Image files below `root`, sorted, following links; none when it does not exist.
fn walk_images(root: &Path) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && is_image_path(e.path()))
        .map(walkdir::DirEntry::into_path)
        .collect()
}

/// `<stem>.xml` files directly in `dir`, by stem (the first in name order on a tie).
fn annotation_index(dir: &Path) -> BTreeMap<OsString, PathBuf> {
    let mut index = BTreeMap::new();
    let files = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .max_depth(1)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_type().is_file()
                && e.path()
                    .extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("xml"))
        });
    for entry in files {
        let stem = entry.path().file_stem().unwrap_or_default().to_os_string();
        index.entry(stem).or_insert_with(|| entry.into_path());
    }
    index
}

/// A split list: stems with their 1-based lines, first mention only.
struct ListFile {
    file: PathBuf,
    entries: Vec<(String, usize)>,
}

impl ListFile {
    fn stems(&self) -> HashSet<String> {
        self.entries.iter().map(|(s, _)| s.clone()).collect()
    }
}

/// Reads a list of stems: each non-blank line's first word, reduced to its stem when it is an
/// image file name or path.
fn read_list(file: &Path) -> Result<ListFile, ImportError> {
    let text = std::fs::read_to_string(file).map_err(|cause| ImportError::List {
        path: file.to_path_buf(),
        cause,
    })?;
    let mut seen = BTreeSet::new();
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let Some(word) = line.split_whitespace().next() else {
            continue;
        };
        let path = Path::new(word);
        let stem = if is_image_path(path) {
            path.file_stem()
        } else {
            path.file_name()
        };
        let stem = stem.map_or_else(|| word.to_owned(), |s| s.to_string_lossy().into_owned());
        if seen.insert(stem.clone()) {
            entries.push((stem, i + 1));
        }
    }
    Ok(ListFile {
        file: file.to_path_buf(),
        entries,
    })
}

/// The sides the split lists give.
struct ListSides {
    /// The train list's stems, when there is a train list.
    train: Option<HashSet<String>>,
    val: HashSet<String>,
}

impl ListSides {
    /// The side of `stem`: `Ok(None)` when a train list exists and names neither, `Err` when
    /// both lists name it.
    fn side(&self, stem: &str) -> Result<Option<Side>, ()> {
        let in_val = self.val.contains(stem);
        match &self.train {
            Some(train) if train.contains(stem) => {
                if in_val {
                    Err(())
                } else {
                    Ok(Some(Side::Train))
                }
            }
            Some(_) => Ok(in_val.then_some(Side::Val)),
            None if in_val => Ok(Some(Side::Val)),
            None => Ok(Some(Side::Train)),
        }
    }
}

/// Image files of IR folders grouped by stem, each folder read once.
#[derive(Default)]
struct FolderIndex {
    folders: HashMap<PathBuf, BTreeMap<OsString, Vec<PathBuf>>>,
}

impl FolderIndex {
    /// The IR file at `expected`, else the first (by name) with its stem and another image
    /// extension, else `None`.
    fn partner(&mut self, expected: &Path) -> Option<PathBuf> {
        let dir = expected.parent()?;
        let by_stem = self
            .folders
            .entry(dir.to_path_buf())
            .or_insert_with(|| images_by_stem(dir));
        let files = by_stem.get(expected.file_stem()?)?;
        if files.iter().any(|f| f == expected) {
            Some(expected.to_path_buf())
        } else {
            files.first().cloned()
        }
    }
}
