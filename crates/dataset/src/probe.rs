//! Reading what an image file is without trusting its extension.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use xxhash_rust::xxh3::xxh3_64;

/// Extensions treated as images and readable by fusekit (Ultralytics' list, less the ones below).
pub const SUPPORTED_EXTENSIONS: &[&str] =
    &["bmp", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp"];

/// Image extensions Ultralytics accepts that fusekit does not decode (reported as IMG004).
pub const UNSUPPORTED_EXTENSIONS: &[&str] = &["dng", "heic", "pfm"];

/// Images above this many pixels are not decoded in full (a guard against decompression bombs).
const MAX_FULL_DECODE_PIXELS: u64 = 250_000_000;

/// How much of each image to read (`header` or `full` in files and on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecodeLevel {
    /// Headers, trailer and a content hash: fast, finds most problems.
    #[default]
    Header,
    /// Every pixel: also finds corrupt data that headers hide, and constant images.
    Full,
}

/// What a full decode found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelSummary {
    /// Every pixel has the same value.
    pub constant: bool,
    /// xxh3 of the decoded pixels with their layout (equal for the same picture in any file).
    pub pixel_hash: u64,
}

/// What probing an image found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format read from the content.
    pub format: ImageFormat,
    /// Stored width in pixels (before any EXIF rotation).
    pub width: u32,
    /// Stored height in pixels.
    pub height: u32,
    /// Colour channels (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA).
    pub channels: u8,
    /// EXIF orientation, 1 to 8 (1 when absent).
    pub orientation: u8,
    /// The file lacks its end marker (JPEG `FFD9`, PNG `IEND`).
    pub truncated: bool,
    /// xxh3 of the file's bytes.
    pub file_hash: u64,
    /// Present after a full decode.
    pub pixels: Option<PixelSummary>,
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

/// Reads `path` and probes it at `level`.
pub fn probe_image(path: &Path, level: DecodeLevel) -> Result<ImageInfo, ProbeError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if UNSUPPORTED_EXTENSIONS.contains(&ext.as_str()) {
        return Err(ProbeError::Unsupported(format!(".{ext} files")));
    }
    let bytes = std::fs::read(path)?;
    probe_bytes(&bytes, level)
}

/// Probes an image held in memory.
pub fn probe_bytes(bytes: &[u8], level: DecodeLevel) -> Result<ImageInfo, ProbeError> {
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
    let truncated = lacks_end_marker(format, bytes);
    let decode_error = |e: image::ImageError| ProbeError::Decode {
        message: e.to_string(),
        truncated,
    };
    let mut decoder = ImageReader::with_format(Cursor::new(bytes), format)
        .into_decoder()
        .map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    let channels = decoder.color_type().channel_count();
    let orientation = decoder.orientation().map(|o| o.to_exif()).unwrap_or(1);
    let pixels = match level {
        DecodeLevel::Header => None,
        DecodeLevel::Full => {
            if u64::from(width) * u64::from(height) > MAX_FULL_DECODE_PIXELS {
                return Err(ProbeError::Decode {
                    message: format!("{width}x{height} is too large to decode"),
                    truncated,
                });
            }
            let image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
            Some(summarise_pixels(&image))
        }
    };
    Ok(ImageInfo {
        format,
        width,
        height,
        channels,
        orientation,
        truncated,
        file_hash: xxh3_64(bytes),
        pixels,
    })
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

fn lacks_end_marker(format: ImageFormat, bytes: &[u8]) -> bool {
    match format {
        ImageFormat::Jpeg => {
            // Tolerate zero padding after the end-of-image marker, as some encoders write it.
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            !bytes[..end].ends_with(&[0xFF, 0xD9])
        }
        ImageFormat::Png => {
            !bytes.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82])
        }
        _ => false,
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
    }
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
        let info = probe_bytes(&jpg, DecodeLevel::Header).unwrap();
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
        match probe_bytes(short, DecodeLevel::Header) {
            Ok(info) => assert!(info.truncated),
            Err(ProbeError::Decode { truncated, .. }) => assert!(truncated),
            Err(e) => panic!("{e}"),
        }
        let png = encode(&gradient(64, 64), ImageFormat::Png);
        let short = &png[..png.len() - 12];
        assert!(probe_bytes(short, DecodeLevel::Header).unwrap().truncated);
    }

    #[test]
    fn full_decode_finds_constant_images_and_equal_pixels_across_formats() {
        let flat =
            DynamicImage::ImageRgb8(image::RgbImage::from_pixel(16, 16, image::Rgb([9, 9, 9])));
        let info = probe_bytes(&encode(&flat, ImageFormat::Png), DecodeLevel::Full).unwrap();
        assert!(info.pixels.unwrap().constant);
        let g = gradient(16, 16);
        let a = probe_bytes(&encode(&g, ImageFormat::Png), DecodeLevel::Full).unwrap();
        let b = probe_bytes(&encode(&g, ImageFormat::Bmp), DecodeLevel::Full).unwrap();
        assert!(!a.pixels.unwrap().constant);
        assert_eq!(a.pixels.unwrap().pixel_hash, b.pixels.unwrap().pixel_hash);
        assert_ne!(a.file_hash, b.file_hash);
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
            probe_bytes(b"GIF89a\x01\x00\x01\x00", DecodeLevel::Header),
            Err(ProbeError::Unsupported(_))
        ));
        assert!(matches!(
            probe_bytes(b"hello world", DecodeLevel::Header),
            Err(ProbeError::Decode { .. })
        ));
        assert!(is_image_path(Path::new("a/B.JPG")) && is_image_path(Path::new("x.heic")));
        assert!(!is_image_path(Path::new("a/b.txt")));
    }
}
