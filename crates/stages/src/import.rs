//! The import stage: LLVIP and other Pascal VOC style RGB + IR datasets into fusekit's layout.

use std::path::PathBuf;

use fusekit_import::{ImportOptions, ImportReport, Layout, Stage, TransferMode, import};

use crate::{Progress, StageError};

/// The source layout of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// LLVIP as distributed: `Annotations/`, `visible/` and `infrared/` with `train` and
    /// `test` folders (test becomes val).
    Llvip {
        /// The LLVIP folder.
        src: PathBuf,
    },
    /// A Pascal VOC folder with an IR image folder beside the RGB one.
    Voc {
        /// The VOC folder.
        src: PathBuf,
        /// The RGB image folder, below `src`.
        rgb_dir: PathBuf,
        /// The IR image folder, below `src`.
        ir_dir: PathBuf,
        /// The `<stem>.xml` annotation folder, below `src`.
        annotations_dir: PathBuf,
        /// A list of val stems replacing `ImageSets/Main/val.txt`.
        val_list: Option<PathBuf>,
    },
}

impl Source {
    fn layout(&self) -> Layout {
        match self {
            Source::Llvip { src } => Layout::llvip(src),
            Source::Voc {
                src,
                rgb_dir,
                ir_dir,
                annotations_dir,
                val_list,
            } => {
                let mut layout = Layout::voc(src, val_list.clone());
                layout.rgb.clone_from(rgb_dir);
                layout.ir.clone_from(ir_dir);
                layout.annotations.clone_from(annotations_dir);
                layout
            }
        }
    }
}

/// Everything an import needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Where the dataset comes from.
    pub source: Source,
    /// The output folder.
    pub out: PathBuf,
    /// Class names in id order (default: every name in the annotations, sorted).
    pub names: Option<Vec<String>>,
    /// Write into a non-empty `out`, replacing only the files an import writes.
    pub force: bool,
    /// Copy images instead of hard-linking them.
    pub copy: bool,
}

/// The import's report: counts per side, every problem with its file and line.
pub type Outcome = ImportReport;

/// Imports `params.source` into `params.out`; problems are listed in the outcome, failures
/// that stop the import are errors.
pub fn run(params: &Params, progress: &dyn Progress) -> Result<Outcome, StageError> {
    let options = ImportOptions {
        names: params.names.clone(),
        force: params.force,
        transfer: if params.copy {
            TransferMode::Copy
        } else {
            TransferMode::Link
        },
    };
    let report = import(
        &params.source.layout(),
        &params.out,
        &options,
        &|event| match event {
            fusekit_import::Progress::Begin { stage, total } => {
                progress.end();
                let unit = match stage {
                    Stage::Read => "annotations",
                    Stage::Write => "pairs",
                };
                progress.begin(stage.as_str(), total, unit);
            }
            fusekit_import::Progress::Step => progress.advance(),
        },
    );
    progress.end();
    Ok(report?)
}
