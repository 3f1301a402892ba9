//! An RGB picture in memory that plotters draws on, written atomically as PNG or JPEG.

use std::io::Write;
use std::path::Path;

use atomic_write_file::AtomicWriteFile;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};
use plotters::coord::Shift;
use plotters::prelude::{BitMapBackend, DrawingArea, IntoDrawingArea};

use crate::PlotError;
use crate::font::ensure_registered;

/// JPEG quality of `labels.jpg` and the batch pictures.
const JPEG_QUALITY: u8 = 90;

/// A `width x height` RGB8 picture.
pub(crate) struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A white canvas (and the font registered, so text can be drawn on it).
    pub(crate) fn white(width: u32, height: u32) -> Result<Self, PlotError> {
        Self::from_rgb(
            width,
            height,
            vec![255; width as usize * height as usize * 3],
        )
    }

    /// A canvas holding `pixels` (RGB8, row-major, `width * height * 3` bytes).
    pub(crate) fn from_rgb(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self, PlotError> {
        ensure_registered()?;
        debug_assert_eq!(pixels.len(), width as usize * height as usize * 3);
        Ok(Canvas {
            width,
            height,
            pixels,
        })
    }

    /// The whole picture as a plotters drawing area; drawing ends when it is dropped.
    pub(crate) fn area(&mut self) -> DrawingArea<BitMapBackend<'_>, Shift> {
        BitMapBackend::with_buffer(&mut self.pixels, (self.width, self.height)).into_drawing_area()
    }

    /// Encodes the picture (PNG, or JPEG for a `.jpg` / `.jpeg` path) and replaces `path`
    /// with it atomically.
    pub(crate) fn save(&self, path: &Path) -> Result<(), PlotError> {
        let jpeg = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("jpg") || e.eq_ignore_ascii_case("jpeg"));
        let mut encoded = Vec::new();
        let result = if jpeg {
            JpegEncoder::new_with_quality(&mut encoded, JPEG_QUALITY).write_image(
                &self.pixels,
                self.width,
                self.height,
                ExtendedColorType::Rgb8,
            )
        } else {
            // Fast compression: plots are redrawn every epoch and must stay cheap.
            PngEncoder::new_with_quality(&mut encoded, CompressionType::Fast, FilterType::Sub)
                .write_image(
                    &self.pixels,
                    self.width,
                    self.height,
                    ExtendedColorType::Rgb8,
                )
        };
        result.map_err(|source| PlotError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
        write_atomically(path, &encoded)
    }
}

/// Replaces `path` with `bytes`: a temporary file in the same folder, then a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    let io = |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = AtomicWriteFile::open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.commit().map_err(io)
}

/// The error of a failed plotters call while drawing `what`.
pub(crate) fn drawing<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> PlotError {
    move |e| PlotError::Draw {
        what,
        message: e.to_string(),
    }
}
