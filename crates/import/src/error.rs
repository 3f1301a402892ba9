//! Errors that stop an import before or while writing. Problems with single source files are
//! not errors: they are collected in the [`ImportReport`](crate::ImportReport).

use std::path::PathBuf;

/// Why an import did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A folder of the source layout does not exist.
    #[error("{}: no {role} folder here (is this the right source and preset?)", path.display())]
    MissingFolder {
        /// What the folder holds (`annotation`, `RGB image`, `IR image`).
        role: &'static str,
        /// The folder looked for.
        path: PathBuf,
    },
    /// A split list file could not be read.
    #[error("{}: cannot read the split list: {cause}", path.display())]
    List {
        /// The list file.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The output folder is not empty and `force` was not set.
    #[error(
        "{}: the output folder is not empty (use --force to overwrite the files an import writes; nothing else is touched)",
        path.display()
    )]
    OutNotEmpty {
        /// The output folder.
        path: PathBuf,
    },
    /// The output would be written into (or around) a source folder.
    #[error("{}: the output would overlap the source folder {}", out.display(), source_dir.display())]
    Overlap {
        /// The output folder (or its `images/`, `imagesIR/`, `labels/`).
        out: PathBuf,
        /// The source folder it overlaps.
        source_dir: PathBuf,
    },
    /// The class names given are unusable.
    #[error("invalid class names: {0}")]
    Names(String),
    /// No pair could be imported; nothing was written.
    #[error("{}: nothing to import: {details}", source_dir.display())]
    Nothing {
        /// The source root.
        source_dir: PathBuf,
        /// What was found instead.
        details: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The data yaml could not be rendered.
    #[error("{}: cannot write the data yaml: {message}", path.display())]
    Yaml {
        /// The data yaml.
        path: PathBuf,
        /// The serializer's message.
        message: String,
    },
}

/// Maps an I/O error to [`ImportError::Io`] naming `path`.
pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |cause| ImportError::Io {
        path: path.to_path_buf(),
        cause,
    }
}
