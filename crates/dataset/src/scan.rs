//! Walking a dataset and pairing RGB images with their IR partners and label files.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::config::{Dataset, Source};
use crate::probe::is_image_path;

/// How an RGB image's IR partner was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrPartner {
    /// Same stem and extension in the IR folder.
    Exact(PathBuf),
    /// Same stem, another extension (`a.jpg` / `a.png`).
    OtherExtension(PathBuf),
    /// No file with that stem; `expected` is where it should be, when the swap applies.
    Missing {
        /// The path the IR swap gives.
        expected: Option<PathBuf>,
    },
}

impl IrPartner {
    /// The partner's path, when one was found.
    pub fn path(&self) -> Option<&Path> {
        match self {
            IrPartner::Exact(p) | IrPartner::OtherExtension(p) => Some(p),
            IrPartner::Missing { .. } => None,
        }
    }
}

/// One RGB image with its partners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRecord {
    /// The RGB image.
    pub rgb: PathBuf,
    /// Its IR partner.
    pub ir: IrPartner,
    /// Where its label file should be (it may not exist), when the label swap applies.
    pub label: Option<PathBuf>,
    /// Indices into [`Dataset::splits`] of every split that lists this image.
    pub splits: Vec<usize>,
}

/// What kind of file has no RGB image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OrphanKind {
    /// An IR image.
    Ir,
    /// A label file.
    Label,
}

/// A file in an IR or label folder without an RGB image of the same stem.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Orphan {
    /// IR image or label.
    pub kind: OrphanKind,
    /// The orphaned file.
    pub path: PathBuf,
    /// The folder where its RGB image was looked for.
    pub rgb_dir: PathBuf,
}

/// Several image files in one folder with the same stem (`a.jpg` and `a.png`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StemClash {
    /// The clashing files, sorted.
    pub files: Vec<PathBuf>,
}

/// An image named by a list file that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingListed {
    /// The list file.
    pub list: PathBuf,
    /// 1-based line in it.
    pub line: usize,
    /// The image path it names.
    pub image: PathBuf,
}

/// Everything found by walking a dataset, in a deterministic order.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Every RGB image once, sorted by path.
    pub pairs: Vec<PairRecord>,
    /// IR images and labels without an RGB image (folder sources only).
    pub orphans: Vec<Orphan>,
    /// Same-stem files in one folder, RGB or IR.
    pub clashes: Vec<StemClash>,
    /// Listed images that do not exist.
    pub missing: Vec<MissingListed>,
}

type StemKey = (PathBuf, OsString);

/// Keeps the files a walk should list.
type FileFilter = fn(&Path) -> bool;

fn stem_key(path: &Path) -> StemKey {
    let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
    (dir, path.file_stem().unwrap_or_default().to_os_string())
}

/// Every file below `root` accepted by `keep`, sorted, following links; empty if absent.
fn walk(root: &Path, keep: FileFilter) -> Vec<PathBuf> {
    walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && keep(e.path()))
        .map(walkdir::DirEntry::into_path)
        .collect()
}

fn is_label_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "txt")
}

/// Image files of one folder grouped by stem, read once per folder.
#[derive(Default)]
struct FolderIndex {
    folders: HashMap<PathBuf, BTreeMap<OsString, Vec<PathBuf>>>,
}

/// The image files directly in `dir` grouped by stem, each group sorted by path (empty when
/// the folder cannot be read).
pub fn images_by_stem(dir: &Path) -> BTreeMap<OsString, Vec<PathBuf>> {
    let mut by_stem: BTreeMap<OsString, Vec<PathBuf>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_image_path(p))
        .collect();
    files.sort();
    for file in files {
        by_stem
            .entry(file.file_stem().unwrap_or_default().to_os_string())
            .or_default()
            .push(file);
    }
    by_stem
}

impl FolderIndex {
    fn folder(&mut self, dir: &Path) -> &BTreeMap<OsString, Vec<PathBuf>> {
        self.folders
            .entry(dir.to_path_buf())
            .or_insert_with(|| images_by_stem(dir))
    }

    /// Same-stem files in the folders read so far.
    fn clashes(&self) -> impl Iterator<Item = StemClash> + '_ {
        clashes(self.folders.values().flat_map(BTreeMap::values))
    }
}

/// `files` grouped by folder and stem, each group in the given order.
fn by_stem_key<'a>(files: impl Iterator<Item = &'a PathBuf>) -> HashMap<StemKey, Vec<PathBuf>> {
    let mut by_stem: HashMap<StemKey, Vec<PathBuf>> = HashMap::new();
    for file in files {
        by_stem
            .entry(stem_key(file))
            .or_default()
            .push(file.clone());
    }
    by_stem
}

/// A clash for each group of more than one file.
fn clashes<'a>(groups: impl Iterator<Item = &'a Vec<PathBuf>>) -> impl Iterator<Item = StemClash> {
    groups
        .filter(|files| files.len() > 1)
        .map(|files| StemClash {
            files: files.clone(),
        })
}

impl Dataset {
    /// Walks the dataset's folders and lists, pairing every RGB image with its IR partner and
    /// label path, and collecting orphans and same-stem clashes. Missing folders yield empty
    /// results (and so missing partners), never errors.
    pub fn scan(&self) -> Scan {
        let folders = self.source_folders();
        let walked = self.walk_folders(&folders);
        let mut scan = Scan::default();
        let members = self.members(&walked, &mut scan.missing);

        let rgb_stems = by_stem_key(members.keys());
        let mut found_clashes: BTreeSet<StemClash> = clashes(rgb_stems.values()).collect();

        let mut ir_folders = FolderIndex::default();
        scan.pairs = members
            .into_iter()
            .map(|(rgb, splits)| PairRecord {
                ir: self.ir_partner(&rgb, &mut ir_folders),
                label: self.label_path(&rgb),
                rgb,
                splits,
            })
            .collect();
        found_clashes.extend(ir_folders.clashes());
        scan.clashes = found_clashes.into_iter().collect();
        scan.orphans = self.orphans(&folders, &walked, &rgb_stems);
        scan
    }

    /// The folders named as sources by any split, once each, sorted.
    fn source_folders(&self) -> BTreeSet<&Path> {
        self.splits
            .iter()
            .flat_map(|s| &s.sources)
            .filter_map(|s| match s {
                Source::Folder(dir) => Some(dir.as_path()),
                Source::List { .. } => None,
            })
            .collect()
    }

    /// Walks each RGB folder and its IR and label counterparts once, in parallel: the image
    /// (or, below label roots, label) files below each root.
    fn walk_folders(&self, folders: &BTreeSet<&Path>) -> HashMap<PathBuf, Vec<PathBuf>> {
        let mut jobs: Vec<(PathBuf, FileFilter)> = Vec::new();
        for dir in folders {
            jobs.push((dir.to_path_buf(), is_image_path));
            if let Some(ir_root) = self.ir.apply(dir, &self.root) {
                jobs.push((ir_root, is_image_path));
            }
            if let Some(label_root) = self.labels.apply(dir, &self.root) {
                jobs.push((label_root, is_label_path));
            }
        }
        jobs.sort();
        jobs.dedup();
        jobs.into_par_iter()
            .map(|(root, keep)| {
                let files = walk(&root, keep);
                (root, files)
            })
            .collect()
    }

    /// Every RGB image of the splits, with the indices of the splits that hold it, sorted by
    /// path. Listed images that do not exist are added to `missing` instead.
    fn members(
        &self,
        walked: &HashMap<PathBuf, Vec<PathBuf>>,
        missing: &mut Vec<MissingListed>,
    ) -> BTreeMap<PathBuf, Vec<usize>> {
        let mut members: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
        for (index, split) in self.splits.iter().enumerate() {
            for source in &split.sources {
                match source {
                    Source::Folder(dir) => {
                        for file in &walked[dir] {
                            add_member(&mut members, file, index);
                        }
                    }
                    Source::List { file, images } => {
                        for (image, line) in images {
                            if image.is_file() {
                                add_member(&mut members, image, index);
                            } else {
                                missing.push(MissingListed {
                                    list: file.clone(),
                                    line: *line,
                                    image: image.clone(),
                                });
                            }
                        }
                    }
                }
            }
        }
        members
    }

    /// `rgb`'s IR partner: the file the IR swap names, else one with its stem and another
    /// extension in that folder (the first by path), else missing.
    fn ir_partner(&self, rgb: &Path, ir_folders: &mut FolderIndex) -> IrPartner {
        let Some(expected) = self.ir_path(rgb) else {
            return IrPartner::Missing { expected: None };
        };
        let (dir, stem) = stem_key(&expected);
        match ir_folders.folder(&dir).get(&stem) {
            Some(files) if files.contains(&expected) => IrPartner::Exact(expected),
            Some(files) => IrPartner::OtherExtension(files[0].clone()),
            None => IrPartner::Missing {
                expected: Some(expected),
            },
        }
    }

    /// IR images and label files below the folders' IR and label roots whose RGB image (same
    /// folder after the reverse swap, same stem) is not among `rgb_stems`, sorted.
    fn orphans(
        &self,
        folders: &BTreeSet<&Path>,
        walked: &HashMap<PathBuf, Vec<PathBuf>>,
        rgb_stems: &HashMap<StemKey, Vec<PathBuf>>,
    ) -> Vec<Orphan> {
        let mut orphans = BTreeSet::new();
        for dir in folders {
            for (kind, swap) in [
                (OrphanKind::Ir, &self.ir),
                (OrphanKind::Label, &self.labels),
            ] {
                let Some(root) = swap.apply(dir, &self.root) else {
                    continue;
                };
                let back = swap.reversed();
                for file in &walked[&root] {
                    let (partner_dir, stem) = stem_key(file);
                    let Some(rgb_dir) = back.apply(&partner_dir, &self.root) else {
                        continue;
                    };
                    if !rgb_stems.contains_key(&(rgb_dir.clone(), stem)) {
                        orphans.insert(Orphan {
                            kind,
                            path: file.clone(),
                            rgb_dir,
                        });
                    }
                }
            }
        }
        orphans.into_iter().collect()
    }
}

fn add_member(members: &mut BTreeMap<PathBuf, Vec<usize>>, image: &Path, split: usize) {
    let splits = members.entry(image.to_path_buf()).or_default();
    if !splits.contains(&split) {
        splits.push(split);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn pairs_orphans_and_clashes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in ["images/a.jpg", "imagesIR/a.jpg", "labels/a.txt"] {
            touch(root, f);
        }
        touch(root, "images/b.jpg");
        touch(root, "imagesIR/b.png");
        touch(root, "images/c.jpg");
        touch(root, "images/d.jpg");
        touch(root, "images/d.png");
        touch(root, "imagesIR/e.jpg");
        touch(root, "labels/f.txt");
        let ds = Dataset::from_folder(root, vec!["x".into()]).unwrap();
        let scan = ds.scan();
        let rgb: Vec<_> = scan
            .pairs
            .iter()
            .map(|p| p.rgb.strip_prefix(root).unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            rgb,
            [
                "images/a.jpg",
                "images/b.jpg",
                "images/c.jpg",
                "images/d.jpg",
                "images/d.png"
            ]
        );
        assert_eq!(
            scan.pairs[0].ir,
            IrPartner::Exact(root.join("imagesIR/a.jpg"))
        );
        assert_eq!(scan.pairs[0].label, Some(root.join("labels/a.txt")));
        assert_eq!(
            scan.pairs[1].ir,
            IrPartner::OtherExtension(root.join("imagesIR/b.png"))
        );
        assert_eq!(
            scan.pairs[2].ir,
            IrPartner::Missing {
                expected: Some(root.join("imagesIR/c.jpg"))
            }
        );
        assert_eq!(
            scan.clashes,
            vec![StemClash {
                files: vec![root.join("images/d.jpg"), root.join("images/d.png")]
            }]
        );
        let orphans: Vec<_> = scan
            .orphans
            .iter()
            .map(|o| (o.kind, o.path.clone()))
            .collect();
        assert_eq!(
            orphans,
            vec![
                (OrphanKind::Ir, root.join("imagesIR/e.jpg")),
                (OrphanKind::Label, root.join("labels/f.txt"))
            ]
        );
    }

    #[test]
    fn list_sources_report_missing_images_and_membership() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(root, "images/a.jpg");
        touch(root, "imagesIR/a.jpg");
        std::fs::write(root.join("train.txt"), "images/a.jpg\nimages/zz.jpg\n").unwrap();
        std::fs::write(root.join("val.txt"), "images/a.jpg\n").unwrap();
        let yaml = root.join("data.yaml");
        std::fs::write(&yaml, "train: train.txt\nval: val.txt\nnames: [p]\n").unwrap();
        let scan = Dataset::open(&yaml, None).unwrap().scan();
        assert_eq!(scan.pairs.len(), 1);
        assert_eq!(scan.pairs[0].splits, vec![0, 1]);
        assert_eq!(scan.missing.len(), 1);
        assert_eq!(scan.missing[0].line, 2);
    }
}
