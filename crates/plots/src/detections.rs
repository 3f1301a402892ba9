//! Prediction pictures: a pair's RGB and IR images at their own resolution, side by side,
//! every detection outlined on both halves in its class colour with its label (class name and
//! score) above it. Line width and text size grow with the picture, as in Ultralytics'
//! annotator.

use std::path::Path;

use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::PlotError;
use crate::canvas::{Canvas, drawing};
use crate::style::{class_color, text};

/// Gap between the RGB (left) and the IR (right) half of a picture, in pixels.
pub const PAIR_GAP: u32 = 8;
const WHAT: &str = "a prediction picture";

/// One detection to draw, in pixels of the images.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    /// Class id: picks the colour.
    pub class: u32,
    /// Corners x1, y1, x2, y2 in image pixels.
    pub corners: [f32; 4],
    /// The text drawn on the box, such as `person 0.87`.
    pub label: String,
}

/// The colour boxes of class `class` are drawn in, as RGB bytes (the plots' palette).
pub fn class_rgb(class: u32) -> [u8; 3] {
    let c = class_color(class as usize);
    [c.0, c.1, c.2]
}

/// Box outline width for a `width x height` image: Ultralytics' `max(round((H + W) / 2 *
/// 0.003), 2)`.
pub fn line_width(width: u32, height: u32) -> u32 {
    ((f64::from(width + height) / 2.0 * 0.003).round() as u32).max(2)
}

/// Label text height for a `width x height` image: Ultralytics' `max(round((H + W) / 2 *
/// 0.035), 12)`.
fn font_size(width: u32, height: u32) -> f64 {
    (f64::from(width + height) / 2.0 * 0.035).round().max(12.0)
}

/// Writes `rgb` and `ir` (the same size) side by side, [`PAIR_GAP`] apart, with every one of
/// `detections` outlined on both halves ([`line_width`] pixels inside its corners, in
/// [`class_rgb`]) and its label on a band of that colour above the box (inside it when the box
/// touches the top). JPEG for a `.jpg` / `.jpeg` path, else PNG; written atomically.
///
/// # Errors
///
/// [`PlotError::Input`] when the images differ in size or are empty; [`PlotError::Io`] when
/// `path` cannot be written.
pub fn paired_detections(
    rgb: &RgbImage,
    ir: &RgbImage,
    detections: &[Detected],
    path: &Path,
) -> Result<(), PlotError> {
    let (w, h) = rgb.dimensions();
    if ir.dimensions() != (w, h) || w == 0 || h == 0 {
        return Err(PlotError::Input {
            what: WHAT,
            message: format!(
                "the RGB image is {w}x{h} but the IR image is {}x{}",
                ir.width(),
                ir.height()
            ),
        });
    }
    let line = line_width(w, h);
    let mut picture = RgbImage::from_pixel(2 * w + PAIR_GAP, h, Rgb([255; 3]));
    for (image, offset) in [(rgb, 0), (ir, w + PAIR_GAP)] {
        let mut half = image.clone();
        for d in detections {
            draw_outline(&mut half, d.corners, class_rgb(d.class), line);
        }
        image::imageops::replace(&mut picture, &half, i64::from(offset), 0);
    }
    let (width, height) = picture.dimensions();
    let mut canvas = Canvas::from_rgb(width, height, picture.into_raw())?;
    {
        let root = canvas.area();
        let size = font_size(w, h);
        for d in detections {
            for offset in [0, w + PAIR_GAP] {
                label(&root, offset, (w, h), d, size)?;
            }
        }
        root.present().map_err(drawing(WHAT))?;
    }
    canvas.save(path)
}

/// `corners` (x1, y1, x2, y2) in whole pixels of a `w x h` image, clipped to it.
fn pixel_corners(corners: [f32; 4], w: u32, h: u32) -> [u32; 4] {
    let clip = |v: f32, side: u32| (v.max(0.0) as u32).min(side - 1);
    [
        clip(corners[0], w),
        clip(corners[1], h),
        clip(corners[2], w),
        clip(corners[3], h),
    ]
}

/// Paints the outline of `corners` (x1, y1, x2, y2 in pixels, clipped to the picture) in
/// `colour`, `line` pixels wide inside the corners.
pub fn draw_outline(picture: &mut RgbImage, corners: [f32; 4], colour: [u8; 3], line: u32) {
    let (w, h) = picture.dimensions();
    if w == 0 || h == 0 {
        return;
    }
    let [x0, y0, x1, y1] = pixel_corners(corners, w, h);
    let colour = Rgb(colour);
    let left_band = x0..(x0 + line).min(x1 + 1);
    let right_band = (x1 + 1).saturating_sub(line).max(x0)..=x1;
    for y in y0..=y1 {
        let across = y < y0 + line || y + line > y1;
        let columns: Vec<u32> = if across {
            (x0..=x1).collect()
        } else {
            left_band.clone().chain(right_band.clone()).collect()
        };
        for x in columns {
            picture.put_pixel(x, y, colour);
        }
    }
}

/// Draws `d`'s label on a band of its colour: above the box when there is room, else inside
/// its top edge; moved left as far as needed to stay on its half.
fn label(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    offset: u32,
    (w, h): (u32, u32),
    d: &Detected,
    size: f64,
) -> Result<(), PlotError> {
    if d.label.is_empty() {
        return Ok(());
    }
    let [x0, y0, ..] = pixel_corners(d.corners, w, h);
    let (text_w, text_h) = root
        .estimate_text_size(&d.label, &text(size))
        .map_err(drawing(WHAT))?;
    let pad = (size / 6.0).round() as i32;
    let (band_w, band_h) = (text_w as i32 + 2 * pad, text_h as i32 + pad);
    let left = (x0 as i32).min(w as i32 - band_w).max(0) + offset as i32;
    let top = if y0 as i32 >= band_h {
        y0 as i32 - band_h
    } else {
        y0 as i32
    };
    let colour = class_color(d.class as usize);
    root.draw(&Rectangle::new(
        [(left, top), (left + band_w, top + band_h)],
        colour.filled(),
    ))
    .map_err(drawing(WHAT))?;
    let style = text(size)
        .color(&WHITE)
        .pos(Pos::new(HPos::Left, VPos::Top));
    root.draw_text(&d.label, &style, (left + pad, top + pad / 2))
        .map_err(drawing(WHAT))
}
