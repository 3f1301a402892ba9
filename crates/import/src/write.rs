//! Writing the output: placing images (hard link or copy), label files, the data yaml; every
//! file through a temporary name and a rename, so a file at its final path is complete and an
//! existing output file is replaced, never written through (it may be a link to a source).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use atomic_write_file::AtomicWriteFile;
use fusekit_dataset::DATA_YAML;
use serde::Serialize;

use crate::error::{ImportError, io_error};
use crate::plan::Pair;
use crate::report::{Side, TransferMode};

/// The output folders, below the output root.
pub(crate) const RGB_DIR: &str = "images";
pub(crate) const IR_DIR: &str = "imagesIR";
pub(crate) const LABEL_DIR: &str = "labels";

/// How one image file ended up in the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placed {
    Linked,
    Copied,
}

/// Places image files, hard-linking until a link fails, then copying.
pub(crate) struct Placer {
    links_work: AtomicBool,
    link_error: Mutex<Option<String>>,
}

impl Placer {
    pub(crate) fn new(mode: TransferMode) -> Self {
        Self {
            links_work: AtomicBool::new(mode == TransferMode::Link),
            link_error: Mutex::new(None),
        }
    }

    /// Why linking failed, the first time it did.
    pub(crate) fn into_link_error(self) -> Option<String> {
        self.link_error
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `src` at `dst` (replacing what is there) by hard link or copy.
    pub(crate) fn place(&self, src: &Path, dst: &Path) -> Result<Placed, ImportError> {
        create_parent(dst)?;
        let temp = temp_path(dst);
        remove_if_present(&temp)?;
        let mut placed = Placed::Copied;
        if self.links_work.load(Ordering::Relaxed) {
            match std::fs::hard_link(src, &temp) {
                Ok(()) => placed = Placed::Linked,
                Err(e) => {
                    self.links_work.store(false, Ordering::Relaxed);
                    let mut first = self
                        .link_error
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
        if placed == Placed::Copied {
            std::fs::copy(src, &temp).map_err(|cause| ImportError::Io {
                path: src.to_path_buf(),
                cause: std::io::Error::new(
                    cause.kind(),
                    format!("cannot copy to {}: {cause}", temp.display()),
                ),
            })?;
        }
        finish(&temp, dst)?;
        Ok(placed)
    }
}

/// Places `pair`'s RGB and IR images below `out` (`images/<side>/…`, `imagesIR/<side>/…`) and
/// writes its label file when it has `label` text. Returns the files written, each image with
/// how it was placed (`None` for the label file).
pub(crate) fn write_pair(
    out: &Path,
    pair: &Pair,
    label: Option<&str>,
    placer: &Placer,
) -> Result<Vec<(PathBuf, Option<Placed>)>, ImportError> {
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
        write_atomically(&path, text.as_bytes())?;
        files.push((path, None));
    }
    Ok(files)
}

/// Writes `bytes` to `dst` atomically and durably (a uniquely named temporary file, fsync,
/// rename, fsync of the folder).
pub(crate) fn write_atomically(dst: &Path, bytes: &[u8]) -> Result<(), ImportError> {
    create_parent(dst)?;
    let mut file = AtomicWriteFile::open(dst).map_err(io_error(dst))?;
    file.write_all(bytes).map_err(io_error(dst))?;
    file.commit().map_err(io_error(dst))
}

fn create_parent(path: &Path) -> Result<(), ImportError> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent).map_err(io_error(parent)),
        None => Ok(()),
    }
}

/// Renames `temp` to `dst`. Renaming onto another link to the same file succeeds without
/// doing anything, so a leftover `temp` is removed afterwards.
fn finish(temp: &Path, dst: &Path) -> Result<(), ImportError> {
    std::fs::rename(temp, dst).map_err(io_error(dst))?;
    remove_if_present(temp)
}

fn remove_if_present(path: &Path) -> Result<(), ImportError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(path)(e)),
        _ => Ok(()),
    }
}

fn temp_path(dst: &Path) -> PathBuf {
    let name = dst.file_name().unwrap_or_default().to_string_lossy();
    dst.with_file_name(format!(".{name}.fusekit-import.tmp"))
}

/// Checks that `out` may be written: absent, empty, or `force`; not overlapping a source folder.
pub(crate) fn check_out(out: &Path, sources: &[PathBuf], force: bool) -> Result<(), ImportError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() && !force {
                return Err(ImportError::OutNotEmpty {
                    path: out.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(cause) => return Err(io_error(out)(cause)),
    }
    let resolved_out = resolve(out);
    for source in sources {
        let resolved_source = resolve(source);
        for folder in [RGB_DIR, IR_DIR, LABEL_DIR] {
            let target = resolved_out.join(folder);
            if target.starts_with(&resolved_source) || resolved_source.starts_with(&target) {
                return Err(ImportError::Overlap {
                    out: out.join(folder),
                    source_dir: source.clone(),
                });
            }
        }
    }
    Ok(())
}

/// `path` made absolute, with links resolved in the part of it that exists.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            let mut resolved = canonical;
            for component in rest.iter().rev() {
                resolved.push(component);
            }
            return resolved;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(Component::Normal(name))) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// Files below the output's image and label folders that are not in `written`, relative to
/// `out`, sorted.
pub(crate) fn stale_files(out: &Path, written: &HashSet<PathBuf>) -> Vec<PathBuf> {
    [RGB_DIR, IR_DIR, LABEL_DIR]
        .iter()
        .flat_map(|folder| {
            walkdir::WalkDir::new(out.join(folder))
                .sort_by_file_name()
                .into_iter()
                .filter_map(Result::ok)
                .filter(|e| !e.file_type().is_dir() && !written.contains(e.path()))
                .map(|e| e.path().strip_prefix(out).unwrap_or(e.path()).to_path_buf())
        })
        .collect()
}

#[derive(Serialize)]
struct DataYaml<'a> {
    train: String,
    val: String,
    names: BTreeMap<usize, &'a str>,
    ir: String,
    labels: String,
}

/// Creates the side folders (so an empty val still exists) and writes `data.yaml` atomically.
pub(crate) fn write_data_yaml(
    out: &Path,
    names: &[String],
    header: &str,
) -> Result<(), ImportError> {
    for folder in [RGB_DIR, IR_DIR, LABEL_DIR] {
        for side in Side::ALL {
            let dir = out.join(folder).join(side.as_str());
            std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
    }
    let path = out.join(DATA_YAML);
    let yaml = DataYaml {
        train: format!("{RGB_DIR}/{}", Side::Train.as_str()),
        val: format!("{RGB_DIR}/{}", Side::Val.as_str()),
        names: names.iter().map(String::as_str).enumerate().collect(),
        ir: format!("{RGB_DIR} -> {IR_DIR}"),
        labels: format!("{RGB_DIR} -> {LABEL_DIR}"),
    };
    let body = serde_saphyr::to_string(&yaml).map_err(|e| ImportError::Yaml {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomically(&path, format!("{header}{body}").as_bytes())
}

/// Removes a data yaml left by an earlier import, so an interrupted rerun looks incomplete.
pub(crate) fn remove_data_yaml(out: &Path) -> Result<(), ImportError> {
    remove_if_present(&out.join(DATA_YAML))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_a_link_never_writes_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.jpg");
        std::fs::write(&src, b"original").unwrap();
        let dst = dir.path().join("out/a.jpg");
        let placer = Placer::new(TransferMode::Link);
        assert_eq!(placer.place(&src, &dst).unwrap(), Placed::Linked);
        // Again onto the same inode, then a copy onto the link, then a label-style write.
        assert_eq!(placer.place(&src, &dst).unwrap(), Placed::Linked);
        let copier = Placer::new(TransferMode::Copy);
        assert_eq!(copier.place(&src, &dst).unwrap(), Placed::Copied);
        assert_eq!(copier.into_link_error(), None);
        placer.place(&src, &dst).unwrap();
        write_atomically(&dst, b"new").unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), b"original");
        assert_eq!(std::fs::read(&dst).unwrap(), b"new");
        let left: Vec<_> = std::fs::read_dir(dir.path().join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("a.jpg")]);
    }

    #[test]
    fn output_inside_a_source_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = dir.path().join("JPEGImages");
        std::fs::create_dir_all(&rgb).unwrap();
        let err = check_out(&rgb.join("out"), std::slice::from_ref(&rgb), false).unwrap_err();
        assert!(matches!(err, ImportError::Overlap { .. }), "{err}");
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        let err = check_out(dir.path(), &[images], true).unwrap_err();
        assert!(matches!(err, ImportError::Overlap { .. }), "{err}");
        check_out(&dir.path().join("new"), &[rgb], false).unwrap();
    }
}
