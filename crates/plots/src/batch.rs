//! `train_batchN.jpg`, `val_batch0_labels.jpg`, `val_batch0_pred.jpg`: the images of a batch
//! exactly as the model sees them, each tile its RGB planes and its IR planes side by side with
//! the same boxes drawn on both.

use std::path::Path;

use image::RgbImage;
use image::imageops::{self, FilterType};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::canvas::{Canvas, drawing};
use crate::style::{class_color, text};
use crate::{LabelBox, PlotError};

/// Tiles drawn at most (the first images of the batch).
pub const MAX_TILES: usize = 16;
/// The picture is scaled down to at most this width.
const MAX_WIDTH: usize = 1920;
const WHAT: &str = "a training batch";

/// A batch of paired images: `images` holds `n x planes x imgsz x imgsz` bytes, channel
/// first, the planes R, G, B, then one IR plane (grey) or three; `boxes` are normalised to the
/// square image.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// Side of the square images.
    pub imgsz: usize,
    /// Planes per image: 4 (RGB + grey IR) or 6 (RGB + 3-plane IR).
    pub planes: usize,
    /// The pixels.
    pub images: &'a [u8],
    /// Boxes; [`LabelBox::image`] is the index within the batch.
    pub boxes: &'a [LabelBox],
}

/// Draws the first [`MAX_TILES`] images of `batch` into `path` as a grid of tiles, each the
/// RGB image and the IR image side by side, every box outlined on both in its class colour
/// with its class name (`names[c]`) and score, if any, on the RGB side.
///
/// # Errors
///
/// [`PlotError::Input`] for a plane count other than 4 or 6, pixels that are not whole
/// images, an empty batch, or a box of a class without a name; [`PlotError::Io`] when `path`
/// cannot be written.
pub fn paired_batch(batch: &BatchView<'_>, names: &[String], path: &Path) -> Result<(), PlotError> {
    let images = check(batch, names)?;
    let shown = images.min(MAX_TILES);
    let columns = (shown as f64).sqrt().ceil() as usize;
    let rows = shown.div_ceil(columns);
    // Each tile is two squares wide; the squares shrink so the picture fits MAX_WIDTH.
    let square = batch.imgsz.min(MAX_WIDTH / (2 * columns)).max(1);
    let (width, height) = (columns * 2 * square, rows * square);
    let mut picture = RgbImage::from_pixel(width as u32, height as u32, image::Rgb([255; 3]));
    for index in 0..shown {
        let (x, y) = tile_corner(index, columns, square);
        let (rgb, ir) = halves(batch, index, square);
        imageops::replace(&mut picture, &rgb, x as i64, y as i64);
        imageops::replace(&mut picture, &ir, (x + square) as i64, y as i64);
    }
    let mut canvas = Canvas::from_rgb(width as u32, height as u32, picture.into_raw())?;
    {
        let root = canvas.area();
        for index in 0..shown {
            let (x, y) = tile_corner(index, columns, square);
            let frame = [
                (x as i32, y as i32),
                ((x + 2 * square) as i32 - 1, (y + square) as i32 - 1),
            ];
            root.draw(&Rectangle::new(frame, WHITE.stroke_width(2)))
                .map_err(drawing(WHAT))?;
        }
        for b in batch.boxes.iter().filter(|b| b.image < shown) {
            let (x, y) = tile_corner(b.image, columns, square);
            let label = match b.score {
                Some(score) => format!("{} {score:.2}", names[b.class as usize]),
                None => names[b.class as usize].clone(),
            };
            draw_box(&root, b, &label, (x, y), square)?;
        }
        root.present().map_err(drawing(WHAT))?;
    }
    canvas.save(path)
}

/// The number of images in `batch`, after checking that it can be drawn.
fn check(batch: &BatchView<'_>, names: &[String]) -> Result<usize, PlotError> {
    let input = |message: String| PlotError::Input {
        what: WHAT,
        message,
    };
    if batch.planes != 4 && batch.planes != 6 {
        return Err(input(format!(
            "{} planes per image; RGB + IR images have 4 or 6",
            batch.planes
        )));
    }
    let image_bytes = batch.planes * batch.imgsz * batch.imgsz;
    if image_bytes == 0
        || batch.images.is_empty()
        || !batch.images.len().is_multiple_of(image_bytes)
    {
        return Err(input(format!(
            "{} bytes are not whole {}x{} images of {} planes",
            batch.images.len(),
            batch.imgsz,
            batch.imgsz,
            batch.planes
        )));
    }
    if let Some(b) = batch.boxes.iter().find(|b| b.class as usize >= names.len()) {
        return Err(input(format!(
            "a box has class {}, but there are {} names",
            b.class,
            names.len()
        )));
    }
    Ok(batch.images.len() / image_bytes)
}

/// Top-left corner of tile `index`.
fn tile_corner(index: usize, columns: usize, square: usize) -> (usize, usize) {
    ((index % columns) * 2 * square, (index / columns) * square)
}

/// The RGB and the IR image of `index`, `square` pixels wide.
fn halves(batch: &BatchView<'_>, index: usize, square: usize) -> (RgbImage, RgbImage) {
    let s = batch.imgsz;
    let plane = s * s;
    let start = index * batch.planes * plane;
    let planes = &batch.images[start..start + batch.planes * plane];
    let interleave = |first: usize, grey: bool| {
        let mut pixels = Vec::with_capacity(plane * 3);
        for i in 0..plane {
            for c in 0..3 {
                let source = if grey { first } else { first + c };
                pixels.push(planes[source * plane + i]);
            }
        }
        let full = RgbImage::from_raw(s as u32, s as u32, pixels)
            .unwrap_or_else(|| RgbImage::new(s as u32, s as u32));
        if square == s {
            full
        } else {
            imageops::resize(&full, square as u32, square as u32, FilterType::Triangle)
        }
    };
    (interleave(0, false), interleave(3, batch.planes == 4))
}

/// One box on both halves of its tile (corner `tile`), its class name on the RGB half.
fn draw_box(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    b: &LabelBox,
    name: &str,
    tile: (usize, usize),
    square: usize,
) -> Result<(), PlotError> {
    let color = class_color(b.class as usize);
    let side = square as f32;
    let clamp = |v: f32| v.clamp(0.0, 1.0) * side;
    let (x1, y1) = (clamp(b.x - b.w / 2.0), clamp(b.y - b.h / 2.0));
    let (x2, y2) = (clamp(b.x + b.w / 2.0), clamp(b.y + b.h / 2.0));
    let line = ((square / 320).max(1) + 1) as u32;
    for offset in [0, square] {
        let (ox, oy) = ((tile.0 + offset) as f32, tile.1 as f32);
        let corners = [
            ((ox + x1) as i32, (oy + y1) as i32),
            ((ox + x2) as i32, (oy + y2) as i32),
        ];
        root.draw(&Rectangle::new(corners, color.stroke_width(line)))
            .map_err(drawing(WHAT))?;
    }
    let size = (side / 22.0).clamp(10.0, 22.0);
    let (w, h) = root
        .estimate_text_size(name, &text(f64::from(size)))
        .map_err(drawing(WHAT))?;
    let (w, h) = (w as i32 + 4, h as i32 + 2);
    // At the box's left edge, moved left as far as needed to stay on the RGB half.
    let rgb_right = (tile.0 + square) as i32;
    let left = ((tile.0 as f32 + x1) as i32)
        .min(rgb_right - w)
        .max(tile.0 as i32);
    // Above the box when there is room, inside it otherwise.
    let box_top = (tile.1 as f32 + y1) as i32;
    let top = if box_top - h >= tile.1 as i32 {
        box_top - h
    } else {
        box_top
    };
    root.draw(&Rectangle::new(
        [(left, top), (left + w, top + h)],
        color.filled(),
    ))
    .map_err(drawing(WHAT))?;
    let style = text(f64::from(size))
        .color(&WHITE)
        .pos(Pos::new(HPos::Left, VPos::Top));
    root.draw_text(name, &style, (left + 2, top + 1))
        .map_err(drawing(WHAT))?;
    Ok(())
}
