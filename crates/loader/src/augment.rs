//! Paired augmentation: every geometric change is applied to all planes (RGB and IR) at once,
//! so the modalities stay aligned; colour jitter touches the RGB planes only.
//!
//! Per sample, with Ultralytics' hyperparameter names and defaults: mosaic of four samples
//! (`mosaic`), then a random scale and translation (`scale`, `translate`) with bilinear
//! sampling, a horizontal flip (`fliplr`), and hue / saturation / value gains on RGB (`hsv_h`,
//! `hsv_s`, `hsv_v`). Boxes follow and are dropped when too little of them is left.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use fusekit_cache::format::PAD_VALUE;
use fusekit_cache::{Cache, CacheError};

use crate::letterbox::Letterbox;

/// Augmentation strengths (Ultralytics' names and defaults).
#[derive(Debug, Clone, PartialEq)]
pub struct Augment {
    /// Probability of a horizontal flip.
    pub fliplr: f32,
    /// Probability of a 4-image mosaic.
    pub mosaic: f32,
    /// Scale gain range: uniform in [1 - scale, 1 + scale].
    pub scale: f32,
    /// Translation range as a fraction of the image size.
    pub translate: f32,
    /// Hue gain (fraction of a half turn).
    pub hsv_h: f32,
    /// Saturation gain.
    pub hsv_s: f32,
    /// Value gain.
    pub hsv_v: f32,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            fliplr: 0.5,
            mosaic: 1.0,
            scale: 0.5,
            translate: 0.1,
            hsv_h: 0.015,
            hsv_s: 0.7,
            hsv_v: 0.4,
        }
    }
}

/// A square canvas of planes and its boxes in pixels as [class, x0, y0, x1, y1].
struct Canvas {
    size: usize,
    planes: Vec<u8>,
    boxes: Vec<[f32; 5]>,
}

/// Augments cache sample `index` into `out` (`planes x imgsz x imgsz`); returns its boxes as
/// [class, x, y, w, h] normalised to the output square.
pub(crate) fn augment_sample(
    cache: &Cache,
    population: usize,
    index: usize,
    augment: &Augment,
    rng: &mut ChaCha8Rng,
    out: &mut [u8],
) -> Result<Vec<[f32; 5]>, CacheError> {
    let size = cache.meta().imgsz as usize;
    let planes = cache.meta().planes();
    let canvas = if rng.random::<f32>() < augment.mosaic {
        let others: [usize; 3] =
            std::array::from_fn(|_| rng.random_range(0..population.min(cache.len()).max(1)));
        mosaic(
            cache,
            [index, others[0], others[1], others[2]],
            size,
            planes,
            rng,
        )?
    } else {
        let sample = cache.sample(index)?;
        let mut planes_buf = vec![0u8; planes * size * size];
        let fit = Letterbox::of_sample(cache, index);
        fit.place(&sample, &mut planes_buf);
        let [left, top] = fit.offsets();
        let boxes = sample
            .boxes
            .iter()
            .map(|b| pixel_box(b, sample.width, sample.height, left as f32, top as f32))
            .collect();
        Canvas {
            size,
            planes: planes_buf,
            boxes,
        }
    };
    let mut boxes = affine(&canvas, planes, size, augment, rng, out);
    if rng.random::<f32>() < augment.fliplr {
        for plane in out.chunks_exact_mut(size * size) {
            for row in plane.chunks_exact_mut(size) {
                row.reverse();
            }
        }
        for b in &mut boxes {
            (b[1], b[3]) = (size as f32 - b[3], size as f32 - b[1]);
        }
    }
    hsv(&mut out[..3 * size * size], augment, rng);
    let s = size as f32;
    Ok(boxes
        .into_iter()
        .map(|b| {
            [
                b[0],
                (b[1] + b[3]) / 2.0 / s,
                (b[2] + b[4]) / 2.0 / s,
                (b[3] - b[1]) / s,
                (b[4] - b[2]) / s,
            ]
        })
        .collect())
}

fn pixel_box(b: &[f32; 5], width: usize, height: usize, left: f32, top: f32) -> [f32; 5] {
    let (w, h) = (width as f32, height as f32);
    [
        b[0],
        (b[1] - b[3] / 2.0) * w + left,
        (b[2] - b[4] / 2.0) * h + top,
        (b[1] + b[3] / 2.0) * w + left,
        (b[2] + b[4] / 2.0) * h + top,
    ]
}

/// Four samples around a random centre of a `2 size` canvas, as Ultralytics' load_mosaic.
fn mosaic(
    cache: &Cache,
    indices: [usize; 4],
    size: usize,
    planes: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Canvas, CacheError> {
    let side = 2 * size;
    let mut canvas = vec![PAD_VALUE; planes * side * side];
    let (xc, yc) = (
        rng.random_range(size / 2..size * 3 / 2),
        rng.random_range(size / 2..size * 3 / 2),
    );
    let mut boxes = Vec::new();
    for (quadrant, &index) in indices.iter().enumerate() {
        let sample = cache.sample(index)?;
        let (w, h) = (sample.width, sample.height);
        let (x1a, y1a, x2a, y2a) = match quadrant {
            0 => (xc.saturating_sub(w), yc.saturating_sub(h), xc, yc),
            1 => (xc, yc.saturating_sub(h), (xc + w).min(side), yc),
            2 => (xc.saturating_sub(w), yc, xc, (yc + h).min(side)),
            _ => (xc, yc, (xc + w).min(side), (yc + h).min(side)),
        };
        let (x1b, y1b) = match quadrant {
            0 => (w - (x2a - x1a), h - (y2a - y1a)),
            1 => (0, h - (y2a - y1a)),
            2 => (w - (x2a - x1a), 0),
            _ => (0, 0),
        };
        let (cw, ch) = (x2a - x1a, y2a - y1a);
        for k in 0..planes {
            let plane = sample.plane(k);
            let dst = &mut canvas[k * side * side..(k + 1) * side * side];
            for y in 0..ch {
                let src_row = &plane[(y1b + y) * w + x1b..(y1b + y) * w + x1b + cw];
                dst[(y1a + y) * side + x1a..(y1a + y) * side + x1a + cw].copy_from_slice(src_row);
            }
        }
        let (padw, padh) = (x1a as f32 - x1b as f32, y1a as f32 - y1b as f32);
        for b in &sample.boxes {
            let mut p = pixel_box(b, w, h, padw, padh);
            for v in &mut p[1..] {
                *v = v.clamp(0.0, side as f32);
            }
            boxes.push(p);
        }
    }
    Ok(Canvas {
        size: side,
        planes: canvas,
        boxes,
    })
}

/// A random scale and translation of the canvas into the `size` output (bilinear), as
/// Ultralytics' random_perspective without rotation, shear or perspective. Returns the boxes
/// that keep enough of themselves, in output pixels.
fn affine(
    canvas: &Canvas,
    planes: usize,
    size: usize,
    augment: &Augment,
    rng: &mut ChaCha8Rng,
    out: &mut [u8],
) -> Vec<[f32; 5]> {
    let scale = rng
        .random_range(1.0 - augment.scale..=1.0 + augment.scale)
        .max(0.05);
    let tx = rng.random_range(0.5 - augment.translate..=0.5 + augment.translate) * size as f32;
    let ty = rng.random_range(0.5 - augment.translate..=0.5 + augment.translate) * size as f32;
    let centre = canvas.size as f32 / 2.0;
    let n = canvas.size;
    // Output pixel (u, v) samples canvas point ((u - tx) / scale + centre, ...).
    let coords = |t: f32, c: f32| -> (isize, f32) {
        let p = (t + 0.5 - c) / scale + centre - 0.5;
        let p0 = p.floor();
        (p0 as isize, p - p0)
    };
    let xs: Vec<(isize, f32)> = (0..size).map(|u| coords(u as f32, tx)).collect();
    let ys: Vec<(isize, f32)> = (0..size).map(|v| coords(v as f32, ty)).collect();
    let at = |plane: &[u8], x: isize, y: isize| -> f32 {
        if x < 0 || y < 0 || x >= n as isize || y >= n as isize {
            f32::from(PAD_VALUE)
        } else {
            f32::from(plane[y as usize * n + x as usize])
        }
    };
    for k in 0..planes {
        let plane = &canvas.planes[k * n * n..(k + 1) * n * n];
        let dst = &mut out[k * size * size..(k + 1) * size * size];
        for (v, &(y0, fy)) in ys.iter().enumerate() {
            for (u, &(x0, fx)) in xs.iter().enumerate() {
                let top = at(plane, x0, y0) * (1.0 - fx) + at(plane, x0 + 1, y0) * fx;
                let bottom = at(plane, x0, y0 + 1) * (1.0 - fx) + at(plane, x0 + 1, y0 + 1) * fx;
                dst[v * size + u] = (top * (1.0 - fy) + bottom * fy + 0.5) as u8;
            }
        }
    }
    let s = size as f32;
    canvas
        .boxes
        .iter()
        .filter_map(|b| {
            let map = |p: f32, c: f32, t: f32| (p - c) * scale + t;
            let (x0, y0, x1, y1) = (
                map(b[1], centre, tx),
                map(b[2], centre, ty),
                map(b[3], centre, tx),
                map(b[4], centre, ty),
            );
            let (w1, h1) = (x1 - x0, y1 - y0);
            let clipped = [
                b[0],
                x0.clamp(0.0, s),
                y0.clamp(0.0, s),
                x1.clamp(0.0, s),
                y1.clamp(0.0, s),
            ];
            let (w2, h2) = (clipped[3] - clipped[1], clipped[4] - clipped[2]);
            let aspect = (w2 / (h2 + 1e-16)).max(h2 / (w2 + 1e-16));
            (w2 > 2.0 && h2 > 2.0 && w2 * h2 / (w1 * h1 + 1e-16) > 0.1 && aspect < 100.0)
                .then_some(clipped)
        })
        .collect()
}

/// Hue, saturation and value gains on the R, G, B planes (`rgb` holds the three planes).
/// Value scales every channel; saturation scales each channel's distance from the pixel's
/// maximum (HSV semantics); hue rotates colours about the grey axis.
fn hsv(rgb: &mut [u8], augment: &Augment, rng: &mut ChaCha8Rng) {
    let gain = |g: f32, rng: &mut ChaCha8Rng| rng.random_range(-1.0f32..=1.0) * g + 1.0;
    let (gh, gs, gv) = (
        gain(augment.hsv_h, rng),
        gain(augment.hsv_s, rng),
        gain(augment.hsv_v, rng),
    );
    let angle = (gh - 1.0) * std::f32::consts::PI;
    let (sin, cos) = angle.sin_cos();
    // Rotation about the (1, 1, 1) axis.
    let k = (1.0 - cos) / 3.0;
    let r3 = 3f32.sqrt().recip() * sin;
    let m = [
        [cos + k, k - r3, k + r3],
        [k + r3, cos + k, k - r3],
        [k - r3, k + r3, cos + k],
    ];
    let n = rgb.len() / 3;
    let (r, rest) = rgb.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for i in 0..n {
        let c = [f32::from(r[i]), f32::from(g[i]), f32::from(b[i])];
        let v = c[0].max(c[1]).max(c[2]);
        let s = [
            v - (v - c[0]) * gs,
            v - (v - c[1]) * gs,
            v - (v - c[2]) * gs,
        ];
        let h: [f32; 3] = std::array::from_fn(|j| m[j][0] * s[0] + m[j][1] * s[1] + m[j][2] * s[2]);
        r[i] = (h[0] * gv).clamp(0.0, 255.0) as u8;
        g[i] = (h[1] * gv).clamp(0.0, 255.0) as u8;
        b[i] = (h[2] * gv).clamp(0.0, 255.0) as u8;
    }
}
