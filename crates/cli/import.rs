//! `fusekit import`: LLVIP and other Pascal VOC style RGB + IR datasets into fusekit's layout.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use fusekit_import::{VOC_ANNOTATIONS, VOC_IR, VOC_RGB};
use fusekit_stages::import::{Params, Source};

use crate::output::Format;
use crate::progress::Bars;

/// Arguments of `fusekit import`.
#[derive(Args)]
#[command(
    after_long_help = "Writes OUT/images/{train,val}/ (RGB), OUT/imagesIR/{train,val}/ (IR, same \
file names), OUT/labels/{train,val}/*.txt (YOLO `class cx cy w h`, normalised by each image's own \
size from the annotation's <size>, or from the image header when that is missing or zero) and \
OUT/data.yaml, written last and atomically: an import without data.yaml is incomplete. Images are \
hard-linked when --out is on the same file system, else copied (the summary says which).\n\n\
Nothing is dropped silently: malformed objects (missing fields, non-numbers, xmin >= xmax, more \
than 1 px outside the image, unknown class with --names) are left out of the labels and listed \
with file, object and line; boxes at most 1 px outside are clipped and counted. Images without \
annotation file are background (no label file); annotations without image, images without IR \
partner and images sharing a stem are listed, and such pairs skipped.\n\n\
Exit status: 0 when the import completed (problems are listed as warnings), 2 when it could not \
run or found nothing to import."
)]
pub struct ImportArgs {
    #[command(subcommand)]
    source: SourceCommand,
}

#[derive(Subcommand)]
enum SourceCommand {
    /// LLVIP as distributed: Annotations/*.xml, visible/{train,test}/, infrared/{train,test}/;
    /// its test split becomes val.
    Llvip {
        /// The LLVIP folder (holding Annotations/, visible/ and infrared/).
        src: PathBuf,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// A Pascal VOC folder with an IR image folder beside the RGB one, split by
    /// ImageSets/Main/{train,val}.txt where present (else everything goes to train).
    Voc(VocArgs),
}

/// Arguments of `fusekit import voc`.
#[derive(Args)]
#[command(
    after_long_help = "Split: stems in ImageSets/Main/val.txt (or --val-list) go to val. With \
ImageSets/Main/train.txt, stems in it go to train and images in neither list are skipped and \
listed; without it, every image not in the val list goes to train. A stem in both lists is \
skipped and listed. List lines hold a stem (its first word counts; `a.jpg` counts as `a`)."
)]
struct VocArgs {
    /// The VOC folder (holding the annotation and image folders).
    src: PathBuf,
    /// The RGB image folder, below SRC.
    #[arg(long, value_name = "NAME", default_value = VOC_RGB)]
    rgb_dir: PathBuf,
    /// The IR image folder, below SRC: same file names as the RGB folder (another image
    /// extension is accepted).
    #[arg(long, value_name = "NAME", default_value = VOC_IR)]
    ir_dir: PathBuf,
    /// The folder of <stem>.xml annotation files, below SRC.
    #[arg(long, value_name = "NAME", default_value = VOC_ANNOTATIONS)]
    annotations_dir: PathBuf,
    /// A list of val stems replacing ImageSets/Main/val.txt.
    #[arg(long, value_name = "FILE")]
    val_list: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CommonArgs {
    /// The output folder; created, and it must be empty unless --force is given.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Class names in id order, comma-separated; objects of other classes are reported as
    /// malformed. Default: every class name found in the annotations, sorted.
    #[arg(long, value_delimiter = ',')]
    names: Option<Vec<String>>,
    /// Write into a non-empty --out: the files an import writes (and data.yaml) are replaced,
    /// nothing else is changed or deleted (other files are listed as stale).
    #[arg(long)]
    force: bool,
    /// Copy images instead of hard-linking them (links share the source's bytes).
    #[arg(long)]
    copy: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

impl ImportArgs {
    /// The stage's parameters and the output format.
    fn params(&self) -> (Params, Format) {
        let (source, common) = match &self.source {
            SourceCommand::Llvip { src, common } => (Source::Llvip { src: src.clone() }, common),
            SourceCommand::Voc(voc) => (
                Source::Voc {
                    src: voc.src.clone(),
                    rgb_dir: voc.rgb_dir.clone(),
                    ir_dir: voc.ir_dir.clone(),
                    annotations_dir: voc.annotations_dir.clone(),
                    val_list: voc.val_list.clone(),
                },
                &voc.common,
            ),
        };
        let params = Params {
            source,
            out: common.out.clone(),
            names: common.names.clone(),
            force: common.force,
            copy: common.copy,
        };
        (params, common.format)
    }
}

/// Runs the import and prints its report; problems are warnings (exit 0), failures errors.
pub fn run(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let (params, format) = args.params();
    let report = fusekit_stages::import::run(&params, &Bars::default())?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Human => print!("{}", report.to_human()),
    }
    Ok(ExitCode::SUCCESS)
}
