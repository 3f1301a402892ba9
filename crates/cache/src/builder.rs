//! Building a cache from dataset pairs: decode both images, resize the long side to `imgsz`
//! (aspect kept), store planes and boxes. Parallel over pairs, streaming in bounded chunks.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer, images::Image};
use fusekit_dataset::{IrNorm, RowKind, normalise_ir, parse_labels};
use rayon::prelude::*;
use xxhash_rust::xxh3::Xxh3;

use crate::format::{BOX_LEN, FORMAT_VERSION, Metadata, PAGE};
use crate::reader::{Cache, CacheError, MapMode};
use crate::writer::{CacheWriter, Record, partial_path};

/// One pair to cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInput {
    /// RGB path relative to the dataset root (the sample's name).
    pub name: String,
    /// RGB image.
    pub rgb: PathBuf,
    /// IR image.
    pub ir: PathBuf,
    /// Label file (absent: a background image).
    pub label: Option<PathBuf>,
}

/// IR planes to store: `auto`, `1` or `3` in files and on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IrChannels {
    /// One plane when a spread sample of 16 IR images is grey, else three.
    #[default]
    Auto,
    /// One plane (IR decoded as grey).
    Grey,
    /// Three planes.
    Colour,
}

impl IrChannels {
    /// `auto`, `1` or `3`.
    pub fn as_str(self) -> &'static str {
        match self {
            IrChannels::Auto => "auto",
            IrChannels::Grey => "1",
            IrChannels::Colour => "3",
        }
    }
}

impl std::str::FromStr for IrChannels {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(IrChannels::Auto),
            "1" => Ok(IrChannels::Grey),
            "3" => Ok(IrChannels::Colour),
            other => Err(format!("ir_channels must be auto, 1 or 3, not `{other}`")),
        }
    }
}

impl serde::Serialize for IrChannels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for IrChannels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// A yaml `1` is a number, `auto` a string.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Given {
            Number(u64),
            Text(String),
        }
        let text = match Given::deserialize(deserializer)? {
            Given::Number(n) => n.to_string(),
            Given::Text(text) => text,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Build parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// Long side of the stored images.
    pub imgsz: u32,
    /// How the loader maps the cache by default; `Ram` also checks memory before building.
    pub mode: MapMode,
    /// IR planes.
    pub ir_channels: IrChannels,
    /// How IR samples become 8-bit planes (stored in the metadata and the fingerprint).
    pub ir_norm: IrNorm,
    /// Dataset split name, for the metadata.
    pub split: String,
    /// Class names.
    pub names: Vec<String>,
    /// Pairs left out before the build (lint errors), for the metadata.
    pub skipped: Vec<String>,
    /// Rebuild even when the cache is current.
    pub force: bool,
}

impl Default for BuildOptions {
    /// imgsz 640, ram mode, IR planes detected, IR normalised by `auto`, split `train`, no
    /// names, nothing skipped.
    fn default() -> Self {
        Self {
            imgsz: 640,
            mode: MapMode::Ram,
            ir_channels: IrChannels::Auto,
            ir_norm: IrNorm::Auto,
            split: "train".into(),
            names: Vec::new(),
            skipped: Vec::new(),
            force: false,
        }
    }
}

/// A build that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading an input or writing the cache failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// An input image could not be decoded.
    #[error("{path}: cannot decode: {message}")]
    Decode {
        /// The image.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// Another build holds the lock.
    #[error(
        "another `fusekit cache build` is writing {0} (its lock file is held); wait for it to finish"
    )]
    Locked(PathBuf),
    /// The cache would not fit.
    #[error("{0}")]
    NoRoom(String),
    /// Nothing to build.
    #[error("no usable pairs to cache")]
    Empty,
}

/// What a build did.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildOutcome {
    /// The cache at the target is current; nothing was written.
    UpToDate,
    /// A new cache was written.
    Built {
        /// Samples written.
        samples: usize,
        /// File size.
        bytes: u64,
        /// IR planes chosen.
        ir_channels: u8,
    },
}

/// Stored size of a `width` x `height` image at `imgsz`, as Ultralytics resizes for its caches:
/// long side to `imgsz`, the other side rounded up, aspect kept.
pub fn stored_size(width: u32, height: u32, imgsz: u32) -> (u32, u32) {
    let r = f64::from(imgsz) / f64::from(width.max(height));
    if (r - 1.0).abs() < f64::EPSILON {
        return (width, height);
    }
    let scale = |v: u32| ((f64::from(v) * r).ceil() as u32).clamp(1, imgsz);
    (scale(width), scale(height))
}

/// Bytes the cache will take, from the image headers (without decoding).
pub fn estimate_bytes(inputs: &[BuildInput], imgsz: u32, ir_planes: u8) -> Result<u64, BuildError> {
    let sizes: Vec<u64> = inputs
        .par_iter()
        .map(|input| {
            let (w, h) = image::image_dimensions(&input.rgb).map_err(|e| BuildError::Decode {
                path: input.rgb.clone(),
                message: e.to_string(),
            })?;
            let (w, h) = stored_size(w, h, imgsz);
            let planes = u64::from(w) * u64::from(h) * (3 + u64::from(ir_planes));
            Ok(planes.next_multiple_of(PAGE) + 64 * BOX_LEN as u64)
        })
        .collect::<Result<_, BuildError>>()?;
    Ok(sizes.iter().sum::<u64>() + 2 * PAGE)
}

/// Fingerprint of the inputs (paths, sizes, modification times, label contents) and the
/// parameters; a cache with the same fingerprint is current.
pub fn fingerprint(inputs: &[BuildInput], options: &BuildOptions) -> String {
    let mut hasher = Xxh3::new();
    let params = format!(
        "v{FORMAT_VERSION} imgsz {} ir {:?} ir_norm {} split {} names {:?} skipped {:?}",
        options.imgsz,
        options.ir_channels,
        options.ir_norm,
        options.split,
        options.names,
        options.skipped
    );
    hasher.update(params.as_bytes());
    let stat = |path: &Path| {
        std::fs::metadata(path).ok().map(|m| {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos());
            (m.len(), mtime)
        })
    };
    for input in inputs {
        let label = input
            .label
            .as_ref()
            .and_then(|l| std::fs::read(l).ok())
            .map(|b| xxhash_rust::xxh3::xxh3_64(&b));
        let line = format!(
            "{}\t{:?}\t{:?}\t{:?}\n",
            input.name,
            stat(&input.rgb),
            stat(&input.ir),
            label
        );
        hasher.update(line.as_bytes());
    }
    format!("{:016x}", hasher.digest())
}

/// Memory available to this process in bytes, when known: `FUSEKIT_MEMORY_LIMIT` if set (for
/// containers whose limits are not visible), else the smaller of /proc/meminfo's MemAvailable
/// and the cgroup v2 limit left (memory.max - memory.current).
pub fn available_memory() -> Option<u64> {
    if let Some(limit) = std::env::var("FUSEKIT_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return Some(limit);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
                .map(|kb| kb * 1024)
        });
    let read = |name: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{name}"))
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    };
    let cgroup =
        read("memory.max").map(|max| max.saturating_sub(read("memory.current").unwrap_or(0)));
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Pairs decoded at once: bounds memory whatever the dataset size.
const CHUNK: usize = 48;

/// Builds (or keeps) the cache at `target`. `progress` is called once per pair written.
pub fn build(
    target: &Path,
    inputs: &[BuildInput],
    options: &BuildOptions,
    progress: &(dyn Fn() + Sync),
) -> Result<BuildOutcome, BuildError> {
    if inputs.is_empty() {
        return Err(BuildError::Empty);
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| {
            BuildError::Cache(CacheError::Io {
                path,
                cause: source,
            })
        }
    };
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let lock_path = target.with_extension("lock");
    let lock = File::create(&lock_path).map_err(io(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(BuildError::Locked(target.to_path_buf()));
    }
    remove_stale_partials(target);

    let print = fingerprint(inputs, options);
    if !options.force
        && let Ok(existing) = Cache::open(target, Some(MapMode::Disk))
        && existing.meta().fingerprint == print
    {
        return Ok(BuildOutcome::UpToDate);
    }
    let ir_planes = match options.ir_channels {
        IrChannels::Grey => 1,
        IrChannels::Colour => 3,
        IrChannels::Auto => {
            if ir_is_grey(inputs, options.imgsz, options.ir_norm)? {
                1
            } else {
                3
            }
        }
    };
    let estimate = estimate_bytes(inputs, options.imgsz, ir_planes)?;
    check_room(target, dir, estimate, options.mode)?;

    // Decode and resize a chunk on the rayon pool while a writer thread appends the previous
    // chunk, in input order.
    let mut writer = CacheWriter::create(target)?;
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<Record>>(1);
    let writer = std::thread::scope(|scope| -> Result<CacheWriter, BuildError> {
        let writing = scope.spawn(move || -> Result<CacheWriter, CacheError> {
            for records in receiver {
                for record in &records {
                    writer.push(record)?;
                    progress();
                }
            }
            Ok(writer)
        });
        for chunk in inputs.chunks(CHUNK) {
            let records: Vec<Record> = chunk
                .par_iter()
                .map(|input| prepare_pair(input, options.imgsz, ir_planes, options.ir_norm))
                .collect::<Result<_, BuildError>>()?;
            if sender.send(records).is_err() {
                break;
            }
        }
        drop(sender);
        Ok(writing.join().expect("the writer thread does not panic")?)
    })?;
    let meta = Metadata {
        imgsz: options.imgsz,
        ir_channels: ir_planes,
        ir_norm: options.ir_norm,
        mode: match options.mode {
            MapMode::Ram => "ram".into(),
            MapMode::Disk => "disk".into(),
        },
        names: options.names.clone(),
        split: options.split.clone(),
        samples: inputs.iter().map(|i| i.name.clone()).collect(),
        fingerprint: print,
        skipped: options.skipped.clone(),
        written_by: concat!("fusekit ", env!("CARGO_PKG_VERSION")).into(),
    };
    let samples = writer.len();
    let bytes = writer.finish(&meta)?;
    drop(lock);
    let _ = std::fs::remove_file(&lock_path);
    Ok(BuildOutcome::Built {
        samples,
        bytes,
        ir_channels: ir_planes,
    })
}

fn remove_stale_partials(target: &Path) {
    let prefix = partial_path(target, "");
    let (Some(dir), Some(prefix)) = (prefix.parent(), prefix.file_name()) else {
        return;
    };
    let prefix = prefix.to_string_lossy().into_owned();
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn check_room(target: &Path, dir: &Path, estimate: u64, mode: MapMode) -> Result<(), BuildError> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if mode == MapMode::Ram
        && let Some(available) = available_memory()
        && estimate > available / 10 * 9
    {
        return Err(BuildError::NoRoom(format!(
            "{}: the cache needs {:.2} GiB but only {:.2} GiB of memory is available for --mode ram; use --mode disk (same file, read lazily from disk) or a smaller --imgsz",
            target.display(),
            gib(estimate),
            gib(available)
        )));
    }
    if let Ok(free) = fs4::available_space(dir)
        && estimate > free
    {
        return Err(BuildError::NoRoom(format!(
            "{}: the cache needs {:.2} GiB but the disk has {:.2} GiB free; choose another --out",
            target.display(),
            gib(estimate),
            gib(free)
        )));
    }
    Ok(())
}

/// Whether a spread sample of up to 16 IR images holds grey content only.
fn ir_is_grey(inputs: &[BuildInput], imgsz: u32, ir_norm: IrNorm) -> Result<bool, BuildError> {
    let step = inputs.len().div_ceil(16).max(1);
    let sample: Vec<&BuildInput> = inputs.iter().step_by(step).collect();
    let grey: Vec<bool> = sample
        .par_iter()
        .map(|input| {
            let ir = decode(&input.ir, false, imgsz, Modality::Ir(ir_norm))?;
            Ok(ir.channels == 1 || is_grey(&ir.pixels))
        })
        .collect::<Result<_, BuildError>>()?;
    Ok(grey.iter().all(|&g| g))
}

fn is_grey(rgb: &[u8]) -> bool {
    rgb.chunks_exact(3)
        .all(|p| p[0].abs_diff(p[1]) <= 2 && p[1].abs_diff(p[2]) <= 2)
}

/// A decoded image: interleaved u8 pixels, grey (1 channel) or RGB (3).
struct Decoded {
    pixels: Vec<u8>,
    /// Size of `pixels`: the source size, or less after a DCT-scaled JPEG decode.
    size: (u32, u32),
    /// Size of the source image.
    source: (u32, u32),
    channels: u8,
}

/// The largest JPEG DCT reduction (1, 2, 4 or 8) that still leaves a `width` x `height` image
/// at least as large as its stored size at `imgsz` in both dimensions; libjpeg's scaled output
/// is `ceil(side / reduction)`.
fn dct_reduction(width: u32, height: u32, imgsz: u32) -> u32 {
    let (nw, nh) = stored_size(width, height, imgsz);
    [8, 4, 2]
        .into_iter()
        .find(|&r| width.div_ceil(r) >= nw && height.div_ceil(r) >= nh)
        .unwrap_or(1)
}

/// Which image of a pair is decoded: an RGB image's samples are scaled to 8 bits (16-bit
/// samples divided by 257), an IR image's are mapped by its [`IrNorm`].
#[derive(Debug, Clone, Copy)]
enum Modality {
    Rgb,
    Ir(IrNorm),
}

/// Decodes an image to interleaved u8: grey (1 channel) when `grey` is asked, else RGB.
/// A JPEG that will be shrunk at least 2x for `imgsz` is decoded by libjpeg (mozjpeg) straight to
/// a reduced size (DCT scaling: an anti-aliased resize that skips most of the IDCT work); other
/// JPEGs go through zune-jpeg, which decodes the luma plane alone for grey output; other formats
/// (8- and 16-bit PNG and TIFF among them) through the image crate. IR samples are mapped to 8
/// bits by [`normalise_ir`], the one IR normalisation of fusekit, once.
fn decode(path: &Path, grey: bool, imgsz: u32, modality: Modality) -> Result<Decoded, BuildError> {
    let bytes = std::fs::read(path).map_err(|source| {
        BuildError::Cache(CacheError::Io {
            path: path.to_path_buf(),
            cause: source,
        })
    })?;
    let fail = |message: String| BuildError::Decode {
        path: path.to_path_buf(),
        message,
    };
    if bytes.starts_with(&[0xFF, 0xD8]) {
        let decoded = decode_jpeg(&bytes, grey, imgsz).map_err(fail)?;
        return match modality {
            Modality::Rgb => Ok(decoded),
            Modality::Ir(norm) => normalise_decoded(decoded, norm).map_err(fail),
        };
    }
    let mut image = image::load_from_memory(&bytes).map_err(|e| fail(e.to_string()))?;
    if let Modality::Ir(norm) = modality {
        image = normalise_ir(image, norm);
    }
    let size = (image.width(), image.height());
    let pixels = if grey {
        image.into_luma8().into_raw()
    } else {
        image.into_rgb8().into_raw()
    };
    Ok(Decoded {
        pixels,
        size,
        source: size,
        channels: if grey { 1 } else { 3 },
    })
}

/// A JPEG decoded as [`decode`] describes; the error is the decoder's message.
fn decode_jpeg(bytes: &[u8], grey: bool, imgsz: u32) -> Result<Decoded, String> {
    // A JPEG libjpeg cannot scale (or refuses, such as CMYK) falls back to the full decode.
    if let Some(decoded) = decode_jpeg_scaled(bytes, grey, imgsz) {
        return Ok(decoded);
    }
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let colorspace = if grey {
        ColorSpace::Luma
    } else {
        ColorSpace::RGB
    };
    let options = DecoderOptions::default().jpeg_set_out_colorspace(colorspace);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(
        zune_core::bytestream::ZCursor::new(bytes),
        options,
    );
    let pixels = decoder.decode().map_err(|e| e.to_string())?;
    let info = decoder.info().ok_or("no image information")?;
    let size = (u32::from(info.width), u32::from(info.height));
    Ok(Decoded {
        pixels,
        size,
        source: size,
        channels: if grey { 1 } else { 3 },
    })
}

/// 8-bit decoded IR pixels mapped by `norm` (unchanged under `auto` and `none`), same layout.
fn normalise_decoded(decoded: Decoded, norm: IrNorm) -> Result<Decoded, String> {
    let (w, h) = decoded.size;
    let length = decoded.pixels.len();
    let wrong_size = || format!("{length} decoded bytes do not make a {w}x{h} image");
    let pixels = if decoded.channels == 1 {
        let grey = image::GrayImage::from_raw(w, h, decoded.pixels).ok_or_else(wrong_size)?;
        normalise_ir(image::DynamicImage::ImageLuma8(grey), norm)
            .into_luma8()
            .into_raw()
    } else {
        let rgb = image::RgbImage::from_raw(w, h, decoded.pixels).ok_or_else(wrong_size)?;
        normalise_ir(image::DynamicImage::ImageRgb8(rgb), norm)
            .into_rgb8()
            .into_raw()
    };
    Ok(Decoded { pixels, ..decoded })
}

/// DCT-scaled decode of a JPEG by [`dct_reduction`]; `None` when no reduction applies or libjpeg
/// fails (the full decoder then decides, and names the error).
fn decode_jpeg_scaled(bytes: &[u8], grey: bool, imgsz: u32) -> Option<Decoded> {
    // libjpeg reports fatal errors by unwinding (mozjpeg's error manager), never by aborting.
    std::panic::catch_unwind(|| -> std::io::Result<Option<Decoded>> {
        let mut decompress = mozjpeg::Decompress::new_mem(bytes)?;
        let source = (decompress.width() as u32, decompress.height() as u32);
        let reduction = dct_reduction(source.0, source.1, imgsz);
        if reduction == 1 {
            return Ok(None);
        }
        decompress.scale((8 / reduction) as u8);
        let mut started = if grey {
            decompress.grayscale()?
        } else {
            decompress.rgb()?
        };
        let pixels: Vec<u8> = started.read_scanlines()?;
        let size = (started.width() as u32, started.height() as u32);
        started.finish()?;
        let channels = if grey { 1 } else { 3 };
        Ok(
            (pixels.len() == (size.0 * size.1) as usize * usize::from(channels)).then_some(
                Decoded {
                    pixels,
                    size,
                    source,
                    channels,
                },
            ),
        )
    })
    .ok()?
    .ok()?
}

/// Resizes interleaved pixels (box filter when shrinking, bilinear when growing) and appends
/// them to `planes` as separate planes.
fn resize_into_planes(
    decoded: Decoded,
    (nw, nh): (u32, u32),
    planes: &mut Vec<u8>,
    path: &Path,
) -> Result<(), BuildError> {
    let fail = |message: String| BuildError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let Decoded {
        pixels,
        size: (w, h),
        channels,
        ..
    } = decoded;
    let pixel_type = if channels == 1 {
        PixelType::U8
    } else {
        PixelType::U8x3
    };
    let resized = if (w, h) == (nw, nh) {
        pixels
    } else {
        let src = Image::from_vec_u8(w, h, pixels, pixel_type).map_err(|e| fail(e.to_string()))?;
        let mut dst = Image::new(nw, nh, pixel_type);
        let filter = if nw < w {
            FilterType::Box
        } else {
            FilterType::Bilinear
        };
        Resizer::new()
            .resize(
                &src,
                &mut dst,
                &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter)),
            )
            .map_err(|e| fail(e.to_string()))?;
        dst.into_vec()
    };
    let n = (nw * nh) as usize;
    let start = planes.len();
    planes.resize(start + n * channels as usize, 0);
    let (_, out) = planes.split_at_mut(start);
    if channels == 1 {
        out.copy_from_slice(&resized[..n]);
    } else {
        let (r, rest) = out.split_at_mut(n);
        let (g, b) = rest.split_at_mut(n);
        for (i, px) in resized.chunks_exact(3).enumerate() {
            r[i] = px[0];
            g[i] = px[1];
            b[i] = px[2];
        }
    }
    Ok(())
}

/// Decodes and resizes one pair exactly as the cache stores it (long side `imgsz`, R, G, B then
/// `ir_planes` IR planes mapped to 8 bits by `ir_norm`) with its label boxes: what predictions
/// on new images must see.
pub fn prepare_pair(
    input: &BuildInput,
    imgsz: u32,
    ir_planes: u8,
    ir_norm: IrNorm,
) -> Result<Record, BuildError> {
    let rgb = decode(&input.rgb, false, imgsz, Modality::Rgb)?;
    let ir = decode(&input.ir, ir_planes == 1, imgsz, Modality::Ir(ir_norm))?;
    let (w, h) = rgb.source;
    if ir.source != rgb.source {
        let (iw, ih) = ir.source;
        return Err(BuildError::Decode {
            path: input.ir.clone(),
            message: format!("IR is {iw}x{ih} but RGB is {w}x{h} (lint: PAIR003)"),
        });
    }
    let (nw, nh) = stored_size(w, h, imgsz);
    let mut planes = Vec::with_capacity((nw * nh) as usize * (3 + ir_planes as usize));
    resize_into_planes(rgb, (nw, nh), &mut planes, &input.rgb)?;
    resize_into_planes(ir, (nw, nh), &mut planes, &input.ir)?;
    let boxes = match &input.label {
        Some(label) => match std::fs::read_to_string(label) {
            Ok(text) => parse_labels(&text)
                .into_iter()
                .filter_map(|line| line.row.ok())
                .map(|row| {
                    let b = match row {
                        RowKind::Box(b) => b.clipped(),
                        polygon @ RowKind::Polygon { .. } => polygon.bounding_box(),
                    };
                    [
                        b.class as f32,
                        b.x as f32,
                        b.y as f32,
                        b.w as f32,
                        b.h as f32,
                    ]
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(BuildError::Cache(CacheError::Io {
                    path: label.clone(),
                    cause: source,
                }));
            }
        },
        None => Vec::new(),
    };
    Ok(Record {
        height: nh,
        width: nw,
        source_height: h,
        source_width: w,
        planes,
        boxes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_reduction_keeps_the_decode_at_least_the_stored_size() {
        assert_eq!(dct_reduction(1280, 1024, 640), 2);
        assert_eq!(dct_reduction(1280, 1024, 320), 4);
        assert_eq!(dct_reduction(4000, 3000, 320), 8);
        // Halves round up, as libjpeg's scaled sizes do: 1279x1023 halves to 640x512, its stored
        // size; 1270x1016 would halve below 640 wide.
        assert_eq!(dct_reduction(1279, 1023, 640), 2);
        assert_eq!(dct_reduction(1270, 1016, 640), 1);
        assert_eq!(dct_reduction(200, 160, 150), 1);
        assert_eq!(dct_reduction(320, 256, 640), 1);
    }
}
