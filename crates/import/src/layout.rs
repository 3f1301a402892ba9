//! Where a VOC-style source keeps its annotations and images, and how it splits them.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// How source pairs are assigned to train and val.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SplitRule {
    /// Subfolders of the RGB (and IR) folder name the side: LLVIP's `visible/train` and
    /// `visible/test`. Images outside these subfolders are not looked at.
    Folders {
        /// Subfolders whose images go to train.
        train: Vec<String>,
        /// Subfolders whose images go to val.
        val: Vec<String>,
    },
    /// Text files of image stems, one per line (VOC `ImageSets/Main/{train,val}.txt`; a line's
    /// first word counts, a file name or path is reduced to its stem). Stems in the val list go
    /// to val; with a train list, stems in it go to train and unlisted images are skipped and
    /// reported; without one, every image not in the val list goes to train. With neither
    /// list everything goes to train.
    Lists {
        /// The train list, if any.
        train: Option<PathBuf>,
        /// The val list, if any.
        val: Option<PathBuf>,
    },
}

/// A VOC-style source: `annotations/<stem>.xml` beside RGB and IR image folders with the same
/// relative paths and file names (the IR file may have another image extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The preset's name, for reports and the data yaml's header.
    pub preset: String,
    /// The source root; the folders below are relative to it (or absolute).
    pub root: PathBuf,
    /// The folder of `<stem>.xml` annotation files (not searched recursively).
    pub annotations: PathBuf,
    /// The RGB image folder.
    pub rgb: PathBuf,
    /// The IR image folder.
    pub ir: PathBuf,
    /// How pairs are assigned to train and val.
    pub split: SplitRule,
}

/// The VOC annotation folder.
pub const VOC_ANNOTATIONS: &str = "Annotations";
/// The VOC RGB image folder.
pub const VOC_RGB: &str = "JPEGImages";
/// The IR image folder of the generic VOC preset: VOC's RGB folder name with fusekit's `IR`
/// suffix (as in `images` / `imagesIR`).
pub const VOC_IR: &str = "JPEGImagesIR";

impl Layout {
    /// LLVIP as distributed: `Annotations/`, `visible/{train,test}/`,
    /// `infrared/{train,test}/`; its official test split becomes val.
    pub fn llvip(root: impl Into<PathBuf>) -> Self {
        Self {
            preset: "llvip".to_owned(),
            root: root.into(),
            annotations: PathBuf::from(VOC_ANNOTATIONS),
            rgb: PathBuf::from("visible"),
            ir: PathBuf::from("infrared"),
            split: SplitRule::Folders {
                train: vec!["train".to_owned()],
                val: vec!["test".to_owned()],
            },
        }
    }

    /// A generic VOC folder: `Annotations/`, `JPEGImages/` (RGB), `JPEGImagesIR/` (IR), split
    /// by `ImageSets/Main/train.txt` and `val.txt` where they exist; `val_list`, when given,
    /// replaces `val.txt`.
    pub fn voc(root: impl Into<PathBuf>, val_list: Option<PathBuf>) -> Self {
        let root = root.into();
        let image_set = |name: &str| {
            let path = root.join("ImageSets").join("Main").join(name);
            path.is_file().then_some(path)
        };
        let split = SplitRule::Lists {
            train: image_set("train.txt"),
            val: val_list.or_else(|| image_set("val.txt")),
        };
        Self {
            preset: "voc".to_owned(),
            annotations: PathBuf::from(VOC_ANNOTATIONS),
            rgb: PathBuf::from(VOC_RGB),
            ir: PathBuf::from(VOC_IR),
            split,
            root,
        }
    }

    /// `folder` below the root (or itself when absolute).
    pub(crate) fn dir(&self, folder: &Path) -> PathBuf {
        self.root.join(folder)
    }
}
