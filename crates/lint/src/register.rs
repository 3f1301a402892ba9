//! How far the IR image of a pair is shifted against its RGB image (PAIR007, DS005).
//!
//! Thermal and visible images differ in brightness everywhere (a warm person is bright in IR
//! and dark in RGB), but both show the same outlines: the estimate phase-correlates the two
//! images' edge maps. Each [`Thumbnail`] (the decoded image reduced to at most
//! [`fusekit_dataset::THUMBNAIL_SIDE`] pixels) becomes its Sobel gradient magnitude,
//! normalised to zero mean and unit variance and tapered by a Hann window so that the image
//! borders make no edges of their own; the normalised cross-power spectrum of the two maps
//! transforms back to a surface whose peak sits at the translation, refined to a fraction of
//! a thumbnail pixel by a parabola through the peak and its neighbours.

use std::cell::RefCell;

use fusekit_dataset::Thumbnail;
use rustfft::FftPlanner;
use rustfft::num_complex::Complex32;

/// The peak of the correlation surface must stand this many standard deviations above the
/// surface's mean (away from the peak) for the offset to count: edge maps that share no
/// structure (a flat image, unrelated pictures) give a peak no higher than noise, near 4.5.
const MIN_PEAK_SHARPNESS: f32 = 8.0;

/// The peak must also rise at least this many times as far above the mean as the highest
/// value away from it: a scene whose RGB and IR edges match almost as well at two shifts
/// (a lamp's glow in RGB above a roof line in IR) says nothing certain about either.
const MIN_PEAK_DOMINANCE: f32 = 2.0;

/// Cells on each side of the peak left out of the surface's statistics.
const PEAK_RADIUS: usize = 2;

/// The translation of an IR image against its RGB image, in original pixels: the IR content
/// sits `dx` to the right of and `dy` below where the RGB content is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Offset {
    /// Horizontal shift, positive to the right.
    pub dx: f32,
    /// Vertical shift, positive downward.
    pub dy: f32,
}

impl Offset {
    /// Length of the shift in pixels.
    pub fn length(self) -> f32 {
        self.dx.hypot(self.dy)
    }

    /// The shift rounded to whole pixels.
    pub fn rounded(self) -> [i32; 2] {
        [self.dx.round() as i32, self.dy.round() as i32]
    }
}

thread_local! {
    /// Each worker thread keeps its FFT plans: every pair of a dataset usually has one size.
    static PLANNER: RefCell<FftPlanner<f32>> = RefCell::new(FftPlanner::new());
}

/// The offset of `ir` against `rgb`; `None` when their sizes differ or when the two edge maps
/// share too little structure for the correlation to have a clear peak.
pub(crate) fn estimate_offset(rgb: &Thumbnail, ir: &Thumbnail) -> Option<Offset> {
    if (rgb.width, rgb.height, rgb.scale) != (ir.width, ir.height, ir.scale) {
        return None;
    }
    let (width, height) = (smooth_floor(rgb.width), smooth_floor(rgb.height));
    let window = hann(width, height);
    let mut rgb_spectrum = edge_map(rgb, width, height, &window)?;
    let mut ir_spectrum = edge_map(ir, width, height, &window)?;
    PLANNER.with_borrow_mut(|planner| {
        let fft = Fft2d::new(planner, width, height);
        fft.forward(&mut rgb_spectrum);
        fft.forward(&mut ir_spectrum);
        // The normalised cross-power spectrum: only the phase difference, which is the shift.
        for (ir, rgb) in ir_spectrum.iter_mut().zip(&rgb_spectrum) {
            let product = *ir * rgb.conj();
            *ir = product / (product.norm() + 1e-12);
        }
        fft.inverse(&mut ir_spectrum);
    });
    let surface: Vec<f32> = ir_spectrum.iter().map(|c| c.re).collect();
    let (dx, dy) = peak(&surface, width, height)?;
    let scale = rgb.scale as f32;
    Some(Offset {
        dx: dx * scale,
        dy: dy * scale,
    })
}

/// The largest length up to `n` whose only prime factors are 2, 3 and 5 (fast FFT sizes).
fn smooth_floor(n: usize) -> usize {
    (1..=n)
        .rev()
        .find(|&m| {
            let mut rest = m;
            for p in [2, 3, 5] {
                while rest % p == 0 {
                    rest /= p;
                }
            }
            rest == 1
        })
        .unwrap_or(1)
}

/// A separable Hann window over `width` x `height`, row-major.
fn hann(width: usize, height: usize) -> Vec<f32> {
    let taper = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| 0.5 - 0.5 * (std::f32::consts::TAU * i as f32 / (n - 1).max(1) as f32).cos())
            .collect()
    };
    let (across, down) = (taper(width), taper(height));
    down.iter()
        .flat_map(|&v| across.iter().map(move |&u| u * v))
        .collect()
}

/// The Sobel gradient magnitude of the top-left `width` x `height` of `thumb`, normalised to
/// zero mean and unit variance and windowed, as complex samples; `None` for a flat image.
fn edge_map(
    thumb: &Thumbnail,
    width: usize,
    height: usize,
    window: &[f32],
) -> Option<Vec<Complex32>> {
    let stride = thumb.width;
    let at = |x: usize, y: usize| thumb.values[y * stride + x];
    let mut edges = vec![0f32; width * height];
    for y in 1..height - 1 {
        for x in 1..width - 1 {
            let gx = at(x + 1, y - 1) + 2.0 * at(x + 1, y) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x - 1, y)
                - at(x - 1, y + 1);
            let gy = at(x - 1, y + 1) + 2.0 * at(x, y + 1) + at(x + 1, y + 1)
                - at(x - 1, y - 1)
                - 2.0 * at(x, y - 1)
                - at(x + 1, y - 1);
            edges[y * width + x] = gx.hypot(gy);
        }
    }
    let n = edges.len() as f32;
    let mean = edges.iter().sum::<f32>() / n;
    let variance = edges.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n;
    if variance <= f32::EPSILON * mean.abs().max(1.0) {
        return None;
    }
    let deviation = variance.sqrt();
    Some(
        edges
            .iter()
            .zip(window)
            .map(|(v, w)| Complex32::new((v - mean) / deviation * w, 0.0))
            .collect(),
    )
}

/// A two-dimensional FFT over row-major `width` x `height` samples: one pass along rows, one
/// along columns (through a transposed copy).
struct Fft2d {
    width: usize,
    height: usize,
    rows: std::sync::Arc<dyn rustfft::Fft<f32>>,
    columns: std::sync::Arc<dyn rustfft::Fft<f32>>,
    rows_inverse: std::sync::Arc<dyn rustfft::Fft<f32>>,
    columns_inverse: std::sync::Arc<dyn rustfft::Fft<f32>>,
}

impl Fft2d {
    fn new(planner: &mut FftPlanner<f32>, width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            rows: planner.plan_fft_forward(width),
            columns: planner.plan_fft_forward(height),
            rows_inverse: planner.plan_fft_inverse(width),
            columns_inverse: planner.plan_fft_inverse(height),
        }
    }

    fn forward(&self, data: &mut [Complex32]) {
        self.rows.process(data);
        transpose(data, self.width, self.height);
        self.columns.process(data);
        transpose(data, self.height, self.width);
    }

    /// The inverse transform, scaled so that it undoes [`Fft2d::forward`].
    fn inverse(&self, data: &mut [Complex32]) {
        self.rows_inverse.process(data);
        transpose(data, self.width, self.height);
        self.columns_inverse.process(data);
        transpose(data, self.height, self.width);
        let scale = 1.0 / (self.width * self.height) as f32;
        for value in data {
            *value *= scale;
        }
    }
}

/// Transposes row-major `width` x `height` samples in place (through a copy).
fn transpose(data: &mut [Complex32], width: usize, height: usize) {
    let copy = data.to_vec();
    for (y, row) in copy.chunks_exact(width).enumerate() {
        for (x, &value) in row.iter().enumerate() {
            data[x * height + y] = value;
        }
    }
}

/// The position of the correlation surface's peak as a signed shift (wrapped to within half
/// the size), refined to a fraction of a cell; `None` when the peak is not distinct (see
/// [`MIN_PEAK_SHARPNESS`] and [`MIN_PEAK_DOMINANCE`]).
fn peak(surface: &[f32], width: usize, height: usize) -> Option<(f32, f32)> {
    let (index, &top) = surface
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))?;
    let (px, py) = (index % width, index / width);
    let near = |x: usize, y: usize| {
        let dx = x.abs_diff(px).min(width - x.abs_diff(px));
        let dy = y.abs_diff(py).min(height - y.abs_diff(py));
        dx <= PEAK_RADIUS && dy <= PEAK_RADIUS
    };
    let rest: Vec<f32> = surface
        .iter()
        .enumerate()
        .filter(|(i, _)| !near(i % width, i / width))
        .map(|(_, &v)| v)
        .collect();
    let n = rest.len().max(1) as f32;
    let mean = rest.iter().sum::<f32>() / n;
    let deviation = (rest.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
    let runner_up = rest.iter().copied().fold(mean, f32::max);
    let rise = top - mean;
    if deviation <= 0.0
        || rise / deviation < MIN_PEAK_SHARPNESS
        || rise < MIN_PEAK_DOMINANCE * (runner_up - mean)
    {
        return None;
    }
    let at = |x: usize, y: usize| surface[(y % height) * width + x % width];
    let across = refine(at(px + width - 1, py), top, at(px + 1, py));
    let down = refine(at(px, py + height - 1), top, at(px, py + 1));
    let signed = |p: usize, n: usize| {
        if p > n / 2 {
            p as f32 - n as f32
        } else {
            p as f32
        }
    };
    Some((signed(px, width) + across, signed(py, height) + down))
}

/// The offset, within half a cell, of the vertex of the parabola through three samples.
fn refine(before: f32, centre: f32, after: f32) -> f32 {
    let curvature = before - 2.0 * centre + after;
    if curvature >= 0.0 {
        return 0.0;
    }
    (0.5 * (before - after) / curvature).clamp(-0.5, 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scene of bright and dark rectangles, sampled with its content moved by (dx, dy).
    fn scene(width: usize, height: usize, dx: i32, dy: i32, invert: bool) -> Thumbnail {
        let rects = [
            (10, 12, 40, 30),
            (60, 20, 90, 70),
            (25, 50, 45, 85),
            (100, 5, 130, 40),
        ];
        let values = (0..height)
            .flat_map(|y| (0..width).map(move |x| (x as i32 - dx, y as i32 - dy)))
            .map(|(x, y)| {
                let inside = rects
                    .iter()
                    .filter(|(x0, y0, x1, y1)| x >= *x0 && x < *x1 && y >= *y0 && y < *y1)
                    .count() as f32;
                let level = 40.0 + 60.0 * inside;
                if invert { 255.0 - level } else { level }
            })
            .collect();
        Thumbnail {
            width,
            height,
            scale: 2,
            values,
        }
    }

    #[test]
    fn finds_the_shift_of_inverted_content_in_original_pixels() {
        let rgb = scene(150, 100, 0, 0, false);
        for (dx, dy) in [(0, 0), (6, -3), (-9, 4)] {
            let ir = scene(150, 100, dx, dy, true);
            let offset = estimate_offset(&rgb, &ir).expect("a clear peak");
            assert!(
                (offset.dx - 2.0 * dx as f32).abs() < 1.0
                    && (offset.dy - 2.0 * dy as f32).abs() < 1.0,
                "({dx}, {dy}): {offset:?}"
            );
        }
    }

    #[test]
    fn no_offset_for_flat_or_unrelated_images() {
        let rgb = scene(150, 100, 0, 0, false);
        let flat = Thumbnail {
            values: vec![7.0; 150 * 100],
            ..rgb.clone()
        };
        assert_eq!(estimate_offset(&rgb, &flat), None);
        let mut state = 1u32;
        let noise = Thumbnail {
            values: (0..150 * 100)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 24) as f32
                })
                .collect(),
            ..rgb.clone()
        };
        assert_eq!(estimate_offset(&rgb, &noise), None);
        let smaller = scene(120, 100, 0, 0, false);
        assert_eq!(estimate_offset(&rgb, &smaller), None);
    }

    #[test]
    fn fast_fft_sizes() {
        assert_eq!(smooth_floor(160), 160);
        assert_eq!(smooth_floor(213), 200);
        assert_eq!(smooth_floor(71), 64);
    }
}
