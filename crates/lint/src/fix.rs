//! Writing safe label fixes: originals are copied to a backup folder first, then each fixed
//! file is replaced atomically (temporary file + rename). Images are never touched.

use std::io::Write;
use std::path::{Path, PathBuf};

use atomic_write_file::AtomicWriteFile;

use crate::check::PendingFix;

/// A fix that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {cause}")]
pub struct FixError {
    /// The file being backed up or written.
    pub path: PathBuf,
    /// The underlying error.
    pub cause: std::io::Error,
}

/// Writes `fixes`: each original label goes to `backup_dir` under its path relative to `root`
/// (never overwriting an earlier backup), then the fixed text replaces it atomically. Returns
/// the backups written. Stops at the first failure; files already fixed stay fixed and backed up.
pub fn apply_fixes(
    fixes: &[PendingFix],
    root: &Path,
    backup_dir: &Path,
) -> Result<Vec<PathBuf>, FixError> {
    let mut backups = Vec::with_capacity(fixes.len());
    for fix in fixes {
        let relative = fix.label.strip_prefix(root).unwrap_or(&fix.label);
        let relative: PathBuf = relative
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        let backup = free_path(&backup_dir.join(relative));
        std::fs::create_dir_all(backup.parent().unwrap_or(backup_dir))
            .map_err(|source| fix_error(&backup, source))?;
        std::fs::copy(&fix.label, &backup).map_err(|source| fix_error(&backup, source))?;
        let error = |source| fix_error(&fix.label, source);
        let mut file = AtomicWriteFile::open(&fix.label).map_err(error)?;
        file.write_all(fix.text.as_bytes()).map_err(error)?;
        file.commit().map_err(error)?;
        backups.push(backup);
    }
    Ok(backups)
}

fn fix_error(path: &Path, source: std::io::Error) -> FixError {
    FixError {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// `path`, or `path.1`, `path.2`, ... whichever does not exist yet.
fn free_path(path: &Path) -> PathBuf {
    if !path.exists() {
        return path.to_path_buf();
    }
    (1..)
        .map(|i| {
            let mut name = path.as_os_str().to_os_string();
            name.push(format!(".{i}"));
            PathBuf::from(name)
        })
        .find(|p| !p.exists())
        .expect("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::Code;

    #[test]
    fn backs_up_then_replaces_and_never_overwrites_backups() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ds");
        let label = root.join("labels/a.txt");
        std::fs::create_dir_all(label.parent().unwrap()).unwrap();
        std::fs::write(&label, "original\n").unwrap();
        let fix = PendingFix {
            label: label.clone(),
            text: "fixed\n".into(),
            codes: vec![Code::LBL009],
        };
        let backups = dir.path().join("backup");
        let first = apply_fixes(std::slice::from_ref(&fix), &root, &backups).unwrap();
        assert_eq!(first, vec![backups.join("labels/a.txt")]);
        assert_eq!(std::fs::read_to_string(&label).unwrap(), "fixed\n");
        assert_eq!(std::fs::read_to_string(&first[0]).unwrap(), "original\n");
        let second = apply_fixes(&[fix], &root, &backups).unwrap();
        assert_eq!(second, vec![backups.join("labels/a.txt.1")]);
        assert_eq!(std::fs::read_to_string(&first[0]).unwrap(), "original\n");
    }
}
