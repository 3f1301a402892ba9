//! Pictures for people: a pair's RGB and IR side by side with boxes drawn on both.

use fusekit_cache::Sample;
use image::{Rgb, RgbImage};

use fusekit_plots::PAIR_GAP as GAP;

/// A picture of `sample`'s RGB (left) and IR (right) planes as stored.
pub fn side_by_side(sample: &Sample<'_>, ir_planes: usize) -> RgbImage {
    let (w, h) = (sample.width as u32, sample.height as u32);
    let mut picture = RgbImage::new(2 * w + GAP, h);
    for y in 0..h {
        for x in 0..w {
            let at = (y * w + x) as usize;
            let rgb = std::array::from_fn(|c| sample.plane(c)[at]);
            let ir =
                std::array::from_fn(|c| sample.plane(3 + if ir_planes == 3 { c } else { 0 })[at]);
            picture.put_pixel(x, y, Rgb(rgb));
            picture.put_pixel(w + GAP + x, y, Rgb(ir));
        }
    }
    picture
}

/// Draws the outline of `[x0, y0, x1, y1]` (pixels of one half) on both halves of a
/// [`side_by_side`] picture, clipped to the half.
pub fn draw_box(picture: &mut RgbImage, bbox: [f32; 4], colour: [u8; 3]) {
    let w = (picture.width() - GAP) / 2;
    let h = picture.height();
    if w == 0 || h == 0 {
        return;
    }
    let clip_x = |v: f32| (v.max(0.0) as u32).min(w - 1);
    let clip_y = |v: f32| (v.max(0.0) as u32).min(h - 1);
    let (x0, y0, x1, y1) = (
        clip_x(bbox[0]),
        clip_y(bbox[1]),
        clip_x(bbox[2]),
        clip_y(bbox[3]),
    );
    for offset in [0, w + GAP] {
        for x in x0..=x1 {
            for y in [y0, y1] {
                picture.put_pixel(offset + x, y, Rgb(colour));
            }
        }
        for y in y0..=y1 {
            for x in [x0, x1] {
                picture.put_pixel(offset + x, y, Rgb(colour));
            }
        }
    }
}

/// The colour of class `class`: the plots' palette.
pub use fusekit_plots::class_rgb as class_colour;
