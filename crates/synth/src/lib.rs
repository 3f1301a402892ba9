//! Deterministic LLVIP-like sample datasets for tests, benchmarks and the demo.
//!
//! [`generate`] writes night-time street scenes as RGB + IR JPEG pairs with YOLO labels:
//! dark, low-contrast RGB in which people are barely visible, and IR in which they are warm
//! blobs. Scenes group consecutive frames (LLVIP-style names `SSFFFF`), so splitters have real
//! groups to keep together. [`Defect`]s inject one instance of each lint finding.

mod defects;
mod render;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

pub use defects::Defect;

/// A sample dataset that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    /// A file could not be written.
    #[error("{path}: {cause}")]
    Io {
        /// The path being written.
        path: PathBuf,
        /// The underlying error.
        cause: std::io::Error,
    },
    /// The output folder holds files that fusekit synth did not write.
    #[error("{0} is not empty and was not written by `fusekit synth`; choose another --out")]
    NotEmpty(PathBuf),
    /// The options are inconsistent.
    #[error("{0}")]
    Options(String),
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        cause: source,
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOptions {
    /// Number of pairs.
    pub pairs: usize,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Seed: the same options give byte-identical files.
    pub seed: u64,
    /// Number of scenes (groups of consecutive frames).
    pub scenes: usize,
    /// Class names; objects are drawn from all of them.
    pub names: Vec<String>,
    /// IR image channels: 3 (grey content, as LLVIP ships it) or 1.
    pub ir_channels: u8,
    /// Bits per IR sample: 8, or 16 (raw counts of a radiometric camera, around 28,000;
    /// needs a PNG or TIFF `format`).
    pub ir_bits: u8,
    /// File format of both images of every pair (fusekit pairs files by name and extension).
    pub format: FileFormat,
    /// JPEG quality, 1 to 100.
    pub quality: u8,
    /// Defects to inject, one pair each.
    pub inject: Vec<Defect>,
    /// Pixels (right, down) by which the IR camera of every pair sees the scene moved against
    /// the RGB camera: a misaligned rig (lint's DS005). See [`dataset_shift`].
    pub ir_shift: (i32, i32),
}

/// The IR shift `fusekit synth --inject DS005` gives every pair: 3% of the width to the
/// right and 2% of the height up.
pub fn dataset_shift(width: u32, height: u32) -> (i32, i32) {
    (
        (0.03 * f64::from(width)).round() as i32,
        -(0.02 * f64::from(height)).round() as i32,
    )
}

/// The IR shift of the pair injected with [`Defect::Pair007`], on top of
/// [`SynthOptions::ir_shift`]: 4% of the width to the right and 2% of the height up.
pub fn pair_shift(width: u32, height: u32) -> (i32, i32) {
    (
        (0.04 * f64::from(width)).round() as i32,
        -(0.02 * f64::from(height)).round() as i32,
    )
}

/// The IR shift of pair `index`: the dataset's, plus [`pair_shift`] for a PAIR007 pair.
fn ir_shift_of(options: &SynthOptions, index: usize) -> (i32, i32) {
    let (dx, dy) = options.ir_shift;
    if options.inject.get(index) == Some(&Defect::Pair007) {
        let (px, py) = pair_shift(options.width, options.height);
        (dx + px, dy + py)
    } else {
        (dx, dy)
    }
}

/// The file format of generated images: `jpeg`, `png` or `tiff`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FileFormat {
    /// Baseline JPEG at the options' quality (8-bit only).
    #[default]
    Jpeg,
    /// PNG, 8- or 16-bit.
    Png,
    /// Uncompressed TIFF, 8- or 16-bit.
    Tiff,
}

impl FileFormat {
    /// The file extension: `jpg`, `png` or `tif`.
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Jpeg => "jpg",
            FileFormat::Png => "png",
            FileFormat::Tiff => "tif",
        }
    }
}

impl std::str::FromStr for FileFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "jpeg" | "jpg" => Ok(FileFormat::Jpeg),
            "png" => Ok(FileFormat::Png),
            "tiff" | "tif" => Ok(FileFormat::Tiff),
            other => Err(format!("format must be jpeg, png or tiff, not `{other}`")),
        }
    }
}

/// Parses an image size written `WIDTHxHEIGHT`, such as `1280x1024`.
pub fn parse_size(text: &str) -> Result<(u32, u32), String> {
    parse_pair(
        text,
        &['x', 'X'],
        "expected WIDTHxHEIGHT, such as 1280x1024",
        "a pixel count",
    )
}

/// Parses a shift in pixels written `DX,DY`, such as `12,-4` (`--ir-shift`).
pub fn parse_shift(text: &str) -> Result<(i32, i32), String> {
    parse_pair(
        text,
        &[','],
        "expected DX,DY in pixels, such as 12,-4",
        "a whole number of pixels",
    )
}

/// Two numbers separated by one of `separators`; `form` is the error when there is no
/// separator, `each` says what a number must be.
fn parse_pair<T: std::str::FromStr>(
    text: &str,
    separators: &[char],
    form: &str,
    each: &str,
) -> Result<(T, T), String> {
    let (a, b) = text.split_once(separators).ok_or(form)?;
    let parse = |v: &str| {
        v.trim()
            .parse::<T>()
            .map_err(|_| format!("`{v}` is not {each}"))
    };
    Ok((parse(a)?, parse(b)?))
}

impl Default for SynthOptions {
    fn default() -> Self {
        Self {
            pairs: 200,
            width: 640,
            height: 512,
            seed: 0,
            scenes: 10,
            names: vec!["person".into()],
            ir_channels: 3,
            ir_bits: 8,
            format: FileFormat::Jpeg,
            quality: 90,
            inject: Vec::new(),
            ir_shift: (0, 0),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSummary {
    /// The data yaml.
    pub data_yaml: PathBuf,
    /// Pairs written before defects were injected.
    pub pairs: usize,
    /// Objects labelled.
    pub objects: usize,
    /// Each injected defect with the stem of the pair it was applied to.
    pub injected: Vec<(Defect, String)>,
}

/// Marks a folder as written by `fusekit synth`, so a rerun may replace it.
pub const MARKER: &str = ".fusekit-synth";

/// The file stem of pair `index` (`SSFFFF`: scene, then frame within the scene).
pub fn pair_stem(options: &SynthOptions, index: usize) -> String {
    let per_scene = options.pairs.div_ceil(options.scenes.max(1)).max(1);
    format!("{:02}{:04}", index / per_scene + 1, index % per_scene + 1)
}

/// Writes a dataset into `out` (`images/`, `imagesIR/`, `labels/`, `data.yaml`). An existing
/// `out` must be empty or an earlier synth output, which is replaced. `progress` is called once
/// per pair written (from worker threads).
pub fn generate(
    out: &Path,
    options: &SynthOptions,
    progress: &(dyn Fn() + Sync),
) -> Result<SynthSummary, SynthError> {
    validate(options)?;
    prepare_out(out)?;
    for sub in ["images", "imagesIR", "labels"] {
        let dir = out.join(sub);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
    }
    let objects = (0..options.pairs)
        .into_par_iter()
        .map(|index| {
            let frame = render::render_pair(options, index, ir_shift_of(options, index));
            let stem = pair_stem(options, index);
            let ext = options.format.extension();
            let rgb = out.join("images").join(format!("{stem}.{ext}"));
            let ir = out.join("imagesIR").join(format!("{stem}.{ext}"));
            let label = out.join("labels").join(format!("{stem}.txt"));
            write(
                &rgb,
                &render::encode(&frame.rgb, options.format, options.quality),
            )?;
            let ir_bytes = match &frame.ir_counts {
                Some(counts) => render::encode_counts(
                    counts,
                    (options.width, options.height),
                    options.ir_channels,
                    options.format,
                ),
                None => render::encode(&frame.ir, options.format, options.quality),
            };
            write(&ir, &ir_bytes)?;
            write(&label, frame.label_text().as_bytes())?;
            progress();
            Ok(frame.objects.len())
        })
        .collect::<Result<Vec<usize>, SynthError>>()?
        .into_iter()
        .sum();
    let mut names = options.names.clone();
    let mut val = None;
    let mut test = None;
    let mut injected = Vec::new();
    for (index, &defect) in options.inject.iter().enumerate() {
        let stem = pair_stem(options, index);
        match defect {
            Defect::Ds002 => val = Some("images".to_owned()),
            Defect::Ds003 => names.push("unused".into()),
            Defect::Ds004 => {
                let list = out.join("test.txt");
                write(&list, format!("images/missing_{stem}.jpg\n").as_bytes())?;
                test = Some("test.txt".to_owned());
            }
            _ => defects::apply(defect, out, &stem, options)?,
        }
        injected.push((defect, stem));
    }
    let data_yaml = out.join("data.yaml");
    write(
        &data_yaml,
        data_yaml_text(options, &names, val, test).as_bytes(),
    )?;
    Ok(SynthSummary {
        data_yaml,
        pairs: options.pairs,
        objects,
        injected,
    })
}

fn validate(options: &SynthOptions) -> Result<(), SynthError> {
    let fail = |m: &str| Err(SynthError::Options(m.to_owned()));
    if options.pairs == 0 {
        return fail("--pairs must be at least 1");
    }
    if options.width < 32 || options.height < 32 {
        return fail("images must be at least 32x32");
    }
    if options.names.is_empty() {
        return fail("at least one class name is needed");
    }
    if !matches!(options.ir_channels, 1 | 3) {
        return fail("--ir-channels must be 1 or 3");
    }
    if !(1..=100).contains(&options.quality) {
        return fail("--quality must be 1 to 100");
    }
    match (options.ir_bits, options.format) {
        (8, _) | (16, FileFormat::Png | FileFormat::Tiff) => {}
        (16, FileFormat::Jpeg) => return fail("--ir-bits 16 needs --ir-format png or tiff"),
        _ => return fail("--ir-bits must be 8 or 16"),
    }
    if !options.inject.is_empty() && (options.format, options.ir_bits) != (FileFormat::Jpeg, 8) {
        return fail("--inject works on 8-bit JPEG datasets (the default format and --ir-bits)");
    }
    let (dx, dy) = options.ir_shift;
    if dx.unsigned_abs() >= options.width / 2 || dy.unsigned_abs() >= options.height / 2 {
        return fail("the IR shift must be less than half the image size");
    }
    if options.inject.len() > options.pairs {
        return Err(SynthError::Options(format!(
            "{} defects need at least {} pairs",
            options.inject.len(),
            options.inject.len()
        )));
    }
    Ok(())
}

fn prepare_out(out: &Path) -> Result<(), SynthError> {
    match std::fs::read_dir(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(out)(e)),
        Ok(mut entries) => {
            if entries.next().is_some() {
                if !out.join(MARKER).is_file() {
                    return Err(SynthError::NotEmpty(out.to_path_buf()));
                }
                // The marker says the whole folder is an earlier synth output (with whatever
                // later stages wrote from it, such as split lists): replace all of it.
                std::fs::remove_dir_all(out).map_err(io_error(out))?;
            }
        }
    }
    std::fs::create_dir_all(out).map_err(io_error(out))?;
    write(
        &out.join(MARKER),
        b"Written by `fusekit synth`; `fusekit synth` may replace this folder.\n",
    )
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), SynthError> {
    std::fs::write(path, bytes).map_err(io_error(path))
}

fn data_yaml_text(
    options: &SynthOptions,
    names: &[String],
    val: Option<String>,
    test: Option<String>,
) -> String {
    let mut text = format!(
        "# Written by `fusekit synth --seed {}`: {} LLVIP-like RGB + IR pairs in {} scenes.\n\
         # `fusekit split` writes a train/val split of it.\npath: .\ntrain: images\n",
        options.seed, options.pairs, options.scenes
    );
    if options.ir_bits == 16 {
        text.push_str(
            "# IR images are 16-bit raw counts; `ir_norm` (default auto) maps them to 8 bits.\n",
        );
    }
    if let Some(val) = val {
        text.push_str(&format!("val: {val}\n"));
    }
    if let Some(test) = test {
        text.push_str(&format!("test: {test}\n"));
    }
    text.push_str("names:\n");
    for (id, name) in names.iter().enumerate() {
        text.push_str(&format!("  {id}: {name}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_shifts_parse_or_say_what_is_wrong() {
        assert_eq!(parse_size("1280x1024"), Ok((1280, 1024)));
        assert_eq!(parse_size(" 64 X 48 "), Ok((64, 48)));
        assert_eq!(
            parse_size("1280"),
            Err("expected WIDTHxHEIGHT, such as 1280x1024".into())
        );
        assert_eq!(parse_size("12x-4"), Err("`-4` is not a pixel count".into()));
        assert_eq!(parse_shift("12,-4"), Ok((12, -4)));
        assert_eq!(
            parse_shift("12 -4"),
            Err("expected DX,DY in pixels, such as 12,-4".into())
        );
        assert_eq!(
            parse_shift("1.5,2"),
            Err("`1.5` is not a whole number of pixels".into())
        );
    }

    fn small() -> SynthOptions {
        SynthOptions {
            pairs: 6,
            width: 96,
            height: 64,
            scenes: 2,
            ..SynthOptions::default()
        }
    }

    fn read_all(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = walk(dir)
            .into_iter()
            .map(|p| {
                (
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path))
            } else {
                out.push(path)
            }
        }
        out
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        generate(a.path(), &small(), &|| {}).unwrap();
        generate(b.path(), &small(), &|| {}).unwrap();
        generate(c.path(), &SynthOptions { seed: 1, ..small() }, &|| {}).unwrap();
        assert_eq!(read_all(a.path()), read_all(b.path()));
        assert_ne!(read_all(a.path()), read_all(c.path()));
    }

    #[test]
    fn layout_names_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let summary = generate(dir.path(), &small(), &|| {}).unwrap();
        assert!(summary.objects >= 6);
        assert_eq!(pair_stem(&small(), 0), "010001");
        assert_eq!(pair_stem(&small(), 4), "020002");
        let ds = fusekit_dataset::Dataset::open(&summary.data_yaml, None).unwrap();
        let scan = ds.scan();
        assert_eq!(scan.pairs.len(), 6);
        let label = std::fs::read_to_string(dir.path().join("labels/010001.txt")).unwrap();
        for line in fusekit_dataset::parse_labels(&label) {
            let fusekit_dataset::RowKind::Box(b) = line.row.unwrap() else {
                panic!()
            };
            assert!(!b.exceeds_image() && b.w > 0.0 && b.h > 0.0);
        }
    }

    #[test]
    fn sixteen_bit_ir_holds_raw_counts_in_png_and_tiff() {
        for format in [FileFormat::Png, FileFormat::Tiff] {
            let dir = tempfile::tempdir().unwrap();
            let options = SynthOptions {
                ir_bits: 16,
                ir_channels: 1,
                format,
                ..small()
            };
            generate(dir.path(), &options, &|| {}).unwrap();
            let ext = format.extension();
            let ir = image::open(dir.path().join(format!("imagesIR/010001.{ext}"))).unwrap();
            let rgb = image::open(dir.path().join(format!("images/010001.{ext}"))).unwrap();
            assert!(matches!(rgb, image::DynamicImage::ImageRgb8(_)));
            let image::DynamicImage::ImageLuma16(counts) = ir else {
                panic!("{format:?}: {:?}", ir.color())
            };
            let (lo, hi) = counts
                .as_raw()
                .iter()
                .fold((u16::MAX, 0), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert!(lo > 27_000 && hi < 29_000 && hi - lo > 300, "{lo}..{hi}");
        }
        let jpeg16 = SynthOptions {
            ir_bits: 16,
            ..small()
        };
        let err = generate(tempfile::tempdir().unwrap().path(), &jpeg16, &|| {}).unwrap_err();
        assert!(err.to_string().contains("png or tiff"), "{err}");
    }

    #[test]
    fn refuses_to_overwrite_foreign_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious.txt"), "keep").unwrap();
        assert!(matches!(
            generate(dir.path(), &small(), &|| {}),
            Err(SynthError::NotEmpty(_))
        ));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("precious.txt")).unwrap(),
            "keep"
        );
    }
}
