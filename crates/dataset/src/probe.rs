//! Reading what an image file is without trusting its extension.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::content::{ContentSample, Edges, ReadCounter, read_edges};
use crate::ir::{IrNorm, normalise_ir, sampled_grey_levels};
use crate::thumbnail::Thumbnail;

/// Extensions treated as images and readable by fusekit (Ultralytics' list, less the ones below).
pub const SUPPORTED_EXTENSIONS: &[&str] =
    &["bmp", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"];

/// Image extensions Ultralytics accepts that fusekit does not decode (reported as IMG004).
pub const UNSUPPORTED_EXTENSIONS: &[&str] = &["dng", "heic", "pfm"];

/// A full decode measures chroma, and counts grey levels, on every this-many-th row: the
/// image's mean is the same to a fraction of a level, at a quarter of the work.
const SAMPLED_ROW_STEP: usize = 4;

/// Grey-level counts below this are exact (counted on every row); lint's IMG009 limit is 32.
const EXACT_GREY_LEVELS_BELOW: usize = 64;

/// Images above this many pixels are not decoded in full (a guard against decompression bombs).
const MAX_FULL_DECODE_PIXELS: u64 = 250_000_000;

/// How much of each image to read (`header` or `full` in files and on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeLevel {
    /// Headers, trailer and a partial content hash: fast, finds most problems.
    #[default]
    Header,
    /// Every pixel: also finds corrupt data that headers hide, and constant images.
    Full,
}

/// What a full decode found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PixelSummary {
    /// Every pixel has the same value.
    pub constant: bool,
    /// xxh3 of the decoded pixels with their layout (equal for the same picture in any file).
    pub pixel_hash: u64,
    /// Mean spread between the largest and smallest colour channel of a pixel, in 8-bit grey
    /// levels: 0 for a grey image, under 1 for grey content through a colour JPEG, tens for a
    /// colour photo. Measured on every fourth row.
    pub chroma: f32,
    /// Grey levels the image's cached IR plane would use, when probed as an IR image (see
    /// [`probe_image`]): exact below 64; above, as counted on every fourth row.
    pub ir_levels: Option<u16>,
}

/// What probing an image found.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageInfo {
    /// The format read from the content.
    pub format: ImageFormat,
    /// Stored width in pixels (before any EXIF rotation).
    pub width: u32,
    /// Stored height in pixels.
    pub height: u32,
    /// Colour channels (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
    pub channels: u8,
    /// Bits per channel sample: 8, 16, or 32 (floating point).
    pub bits: u8,
    /// EXIF orientation, 1 to 8 (1 when absent).
    pub orientation: u8,
    /// The file lacks its end marker (JPEG `FFD9`, PNG `IEND`).
    pub truncated: bool,
    /// The file's size and partial content hash (see [`content_identities`]).
    ///
    /// [`content_identities`]: crate::content_identities
    pub content: ContentSample,
    /// Present after a full decode.
    pub pixels: Option<PixelSummary>,
    /// The decoded image reduced to a small brightness image, after a full decode of an image
    /// large enough for one (see [`Thumbnail::of`]).
    pub thumbnail: Option<Thumbnail>,
}

/// Why an image could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// A format fusekit does not read.
    #[error("format not supported: {0}")]
    Unsupported(String),
    /// The content does not decode.
    #[error("{message}")]
    Decode {
        /// The decoder's message.
        message: String,
        /// The file also lacks its end marker.
        truncated: bool,
    },
}

/// Whether a path has an image extension (supported or not), case-insensitively.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .is_some_and(|e| {
            SUPPORTED_EXTENSIONS.contains(&e.as_str())
                || UNSUPPORTED_EXTENSIONS.contains(&e.as_str())
        })
}

/// Reads `path` and probes it at `level`, adding the bytes it reads to `counter`. `ir_norm`
/// is given for IR images: a full decode then also counts the grey levels of the plane the
/// cache would store ([`PixelSummary::ir_levels`]).
///
/// At [`DecodeLevel::Header`] a file larger than `2 * CONTENT_EDGE` bytes is read at its ends
/// only: its header from the first [`CONTENT_EDGE`] bytes, its end marker and partial content
/// hash from those and the last ones. It is read whole only when its header does not fit in
/// the first bytes (or does not decode, so that the error is the whole file's) or when zero
/// padding hides its end marker. [`DecodeLevel::Full`] reads every file whole.
///
/// [`CONTENT_EDGE`]: crate::CONTENT_EDGE
pub fn probe_image(
    path: &Path,
    level: DecodeLevel,
    ir_norm: Option<IrNorm>,
    counter: &ReadCounter,
) -> Result<ImageInfo, ProbeError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if UNSUPPORTED_EXTENSIONS.contains(&ext.as_str()) {
        return Err(ProbeError::Unsupported(format!(".{ext} files")));
    }
    if level == DecodeLevel::Header {
        let (sample, edges) = read_edges(path, counter)?;
        match edges {
            Edges::Whole(bytes) => return probe_bytes(&bytes, level, ir_norm),
            Edges::Ends { head, tail } => {
                if let Some(info) = probe_ends(&head, &tail, sample)? {
                    return Ok(info);
                }
            }
        }
    }
    let bytes = std::fs::read(path)?;
    counter.add(bytes.len() as u64);
    probe_bytes(&bytes, level, ir_norm)
}

/// Probes an image held in memory (`ir_norm`: as for [`probe_image`]).
pub fn probe_bytes(
    bytes: &[u8],
    level: DecodeLevel,
    ir_norm: Option<IrNorm>,
) -> Result<ImageInfo, ProbeError> {
    let format = sniff(bytes)?;
    // A JPEG that is all zeros after its signature has no end marker.
    let truncated = lacks_end_marker(format, bytes).unwrap_or(true);
    let decode_error = |e: image::ImageError| ProbeError::Decode {
        message: e.to_string(),
        truncated,
    };
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(decode_error)?;
    let header = read_header(&mut decoder);
    let (pixels, thumbnail) = match level {
        DecodeLevel::Header => (None, None),
        DecodeLevel::Full => {
            let (width, height) = (header.width, header.height);
            if u64::from(width) * u64::from(height) > MAX_FULL_DECODE_PIXELS {
                return Err(ProbeError::Decode {
                    message: format!("{width}x{height} is too large to decode"),
                    truncated,
                });
            }
            let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
            let mut summary = summarise_pixels(&image);
            let thumbnail = Thumbnail::of(&image);
            summary.ir_levels = ir_norm.map(|norm| {
                let plane = normalise_ir(image, norm);
                sampled_grey_levels(&plane, SAMPLED_ROW_STEP, EXACT_GREY_LEVELS_BELOW).min(256)
                    as u16
            });
            (Some(summary), thumbnail)
        }
    };
    let mut info = header.info(format, truncated, ContentSample::of_bytes(bytes), pixels);
    info.thumbnail = thumbnail;
    Ok(info)
}

/// Probes a file's header from its first bytes and its end marker from its last ones; `None`
/// when they do not settle it (the header runs past `head` or does not decode, or zero
/// padding fills `tail`) and the whole file is needed.
fn probe_ends(
    head: &[u8],
    tail: &[u8],
    content: ContentSample,
) -> Result<Option<ImageInfo>, ProbeError> {
    let format = sniff(head)?;
    let Some(truncated) = lacks_end_marker(format, tail) else {
        return Ok(None);
    };
    let Ok(mut decoder) = ImageReader::with_format(Cursor::new(head), format).into_decoder() else {
        return Ok(None);
    };
    let header = read_header(&mut decoder);
    Ok(Some(header.info(format, truncated, content, None)))
}

/// The format from the file's signature, if fusekit reads it.
fn sniff(bytes: &[u8]) -> Result<ImageFormat, ProbeError> {
    let format = image::guess_format(bytes).map_err(|_| ProbeError::Decode {
        message: "not a recognised image (unknown file signature)".into(),
        truncated: false,
    })?;
    if !matches!(
        format,
        ImageFormat::Jpeg
            | ImageFormat::Png
            | ImageFormat::Bmp
            | ImageFormat::Tiff
            | ImageFormat::WebP
    ) {
        return Err(ProbeError::Unsupported(format!("{format:?} content")));
    }
    Ok(format)
}

/// What an image's header says.
struct Header {
    width: u32,
    height: u32,
    channels: u8,
    bits: u8,
    orientation: u8,
}

fn read_header(decoder: &mut impl ImageDecoder) -> Header {
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    Header {
        width,
        height,
        channels: color.channel_count(),
        bits: (color.bits_per_pixel() / u16::from(color.channel_count())) as u8,
        orientation: decoder.orientation().map(|o| o.to_exif()).unwrap_or(1),
    }
}

impl Header {
    fn info(
        self,
        format: ImageFormat,
        truncated: bool,
        content: ContentSample,
        pixels: Option<PixelSummary>,
    ) -> ImageInfo {
        ImageInfo {
            format,
            width: self.width,
            height: self.height,
            channels: self.channels,
            bits: self.bits,
            orientation: self.orientation,
            truncated,
            content,
            pixels,
            thumbnail: None,
        }
    }
}

/// A 64-bit difference hash (dHash) of an image's brightness: decode, shrink to 9x8 grey,
/// one bit per horizontal neighbour pair. Near-identical pictures (consecutive video frames,
/// re-encodes) differ in few bits; compare with `(a ^ b).count_ones()`.
pub fn perceptual_hash(path: &Path) -> Result<u64, ProbeError> {
    let bytes = std::fs::read(path)?;
    let image = image::load_from_memory(&bytes).map_err(|e| ProbeError::Decode {
        message: e.to_string(),
        truncated: false,
    })?;
    Ok(difference_hash(&image))
}

fn difference_hash(image: &DynamicImage) -> u64 {
    let small = image::imageops::resize(
        &image.to_luma8(),
        9,
        8,
        image::imageops::FilterType::Triangle,
    );
    let mut hash = 0u64;
    for y in 0..8 {
        for x in 0..8 {
            let brighter = small.get_pixel(x + 1, y)[0] > small.get_pixel(x, y)[0];
            hash = (hash << 1) | u64::from(brighter);
        }
    }
    hash
}

/// Whether a file ending in `end` (its last bytes, or all of them) lacks its format's end
/// marker; `None` when `end` is zero padding from too near its start to tell.
fn lacks_end_marker(format: ImageFormat, end: &[u8]) -> Option<bool> {
    match format {
        ImageFormat::Jpeg => {
            // Tolerate zero padding after the end-of-image marker, as some encoders write it.
            match end.iter().rposition(|&b| b != 0) {
                Some(last) if last >= 1 => Some(!end[..=last].ends_with(&[0xFF, 0xD9])),
                _ => None,
            }
        }
        ImageFormat::Png => {
            Some(!end.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]))
        }
        _ => Some(false),
    }
}

fn summarise_pixels(image: &DynamicImage) -> PixelSummary {
    let data = image.as_bytes();
    let pixel = image.color().bytes_per_pixel() as usize;
    let constant = data.len() < pixel || data.chunks_exact(pixel).all(|p| p == &data[..pixel]);
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(&image.width().to_le_bytes());
    hasher.update(&image.height().to_le_bytes());
    hasher.update(&[image.color().channel_count()]);
    hasher.update(data);
    PixelSummary {
        constant,
        pixel_hash: hasher.digest(),
        chroma: mean_chroma(image),
        ir_levels: None,
    }
}

/// Mean over the pixels of every [`SAMPLED_ROW_STEP`]-th row of the largest minus the
/// smallest of R, G and B, in 8-bit levels.
fn mean_chroma(image: &DynamicImage) -> f32 {
    if !image.color().has_color() {
        return 0.0;
    }
    let converted;
    let rgb = match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => {
            converted = other.to_rgb8();
            &converted
        }
    };
    let row_len = rgb.width() as usize * 3;
    let (spread, pixels) = rgb
        .as_raw()
        .chunks_exact(row_len.max(3))
        .step_by(SAMPLED_ROW_STEP)
        .fold((0u64, 0u64), |(spread, pixels), row| {
            let row_spread: u64 = row
                .chunks_exact(3)
                .map(|p| u64::from(p[0].max(p[1]).max(p[2]) - p[0].min(p[1]).min(p[2])))
                .sum();
            (spread + row_spread, pixels + (row_len / 3) as u64)
        });
    (spread as f64 / pixels.max(1) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn gradient(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([x as u8, y as u8, 7])
        }))
    }

    #[test]
    fn header_probe_reads_size_and_format() {
        let jpg = encode(&gradient(40, 30), ImageFormat::Jpeg);
        let info = probe_bytes(&jpg, DecodeLevel::Header, None).unwrap();
        assert_eq!(
            (info.format, info.width, info.height, info.channels),
            (ImageFormat::Jpeg, 40, 30, 3)
        );
        assert_eq!(info.orientation, 1);
        assert!(!info.truncated && info.pixels.is_none());
    }

    #[test]
    fn truncated_files_are_flagged() {
        let jpg = encode(&gradient(64, 64), ImageFormat::Jpeg);
        let short = &jpg[..jpg.len() - 100];
        match probe_bytes(short, DecodeLevel::Header, None) {
            Ok(info) => assert!(info.truncated),
            Err(ProbeError::Decode { truncated, .. }) => assert!(truncated),
            Err(e) => panic!("{e}"),
        }
        let png = encode(&gradient(64, 64), ImageFormat::Png);
        let short = &png[..png.len() - 12];
        assert!(
            probe_bytes(short, DecodeLevel::Header, None)
                .unwrap()
                .truncated
        );
    }

    #[test]
    fn full_decode_finds_constant_images_and_equal_pixels_across_formats() {
        let flat =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(16, 16, image::Rgb([9, 9, 9])));
        let info = probe_bytes(&encode(&flat, ImageFormat::Png), DecodeLevel::Full, None).unwrap();
        assert!(info.pixels.unwrap().constant);
        let g = gradient(16, 16);
        let a = probe_bytes(&encode(&g, ImageFormat::Png), DecodeLevel::Full, None).unwrap();
        let b = probe_bytes(&encode(&g, ImageFormat::Bmp), DecodeLevel::Full, None).unwrap();
        assert!(!a.pixels.unwrap().constant);
        assert_eq!(a.pixels.unwrap().pixel_hash, b.pixels.unwrap().pixel_hash);
        assert_ne!(a.content, b.content);
    }

    #[test]
    fn sixteen_bit_depth_chroma_and_ir_levels() {
        let raw =
            image::ImageBuffer::from_fn(32, 8, |x, _| image::Luma([28_000u16 + 4 * x as u16]));
        let png = encode(&DynamicImage::ImageLuma16(raw), ImageFormat::Png);
        let header = probe_bytes(&png, DecodeLevel::Header, None).unwrap();
        assert_eq!((header.channels, header.bits), (1, 16));
        let as_ir = |norm| {
            probe_bytes(&png, DecodeLevel::Full, Some(norm))
                .unwrap()
                .pixels
                .unwrap()
        };
        assert_eq!(as_ir(IrNorm::Auto).ir_levels, Some(32));
        // 28000..28124 shares one high byte.
        assert_eq!(as_ir(IrNorm::None).ir_levels, Some(1));
        assert_eq!(as_ir(IrNorm::Auto).chroma, 0.0);
        let colour = probe_bytes(
            &encode(&gradient(16, 16), ImageFormat::Png),
            DecodeLevel::Full,
            None,
        )
        .unwrap()
        .pixels
        .unwrap();
        assert!(
            colour.chroma > 5.0 && colour.ir_levels.is_none(),
            "{colour:?}"
        );
        let jpg = encode(&gradient(16, 16), ImageFormat::Jpeg);
        assert_eq!(
            probe_bytes(&jpg, DecodeLevel::Header, None).unwrap().bits,
            8
        );
    }

    #[test]
    fn difference_hash_is_robust_to_re_encoding_but_not_to_content() {
        let g = gradient(64, 48);
        let noisy = DynamicImage::ImageRgb8(image::RgbImage::from_fn(64, 48, |x, y| {
            image::Rgb([(x as u8).wrapping_add((x * y % 3) as u8), y as u8, 7])
        }));
        let flipped = g.fliph();
        let (a, b, c) = (
            difference_hash(&g),
            difference_hash(&noisy),
            difference_hash(&flipped),
        );
        assert!((a ^ b).count_ones() <= 4, "{:064b}\n{:064b}", a, b);
        assert!((a ^ c).count_ones() > 16);
    }

    #[test]
    fn foreign_and_garbage_content() {
        assert!(matches!(
            probe_bytes(b"GIF89a\x01\x00\x01\x00", DecodeLevel::Header, None),
            Err(ProbeError::Unsupported(_))
        ));
        assert!(matches!(
            probe_bytes(b"hello world", DecodeLevel::Header, None),
            Err(ProbeError::Decode { .. })
        ));
        assert!(is_image_path(Path::new("a/B.JPG")) && is_image_path(Path::new("x.heic")));
        assert!(!is_image_path(Path::new("a/b.txt")));
    }
}
