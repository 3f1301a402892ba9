//! Letterbox geometry and the pixel copy: a stored image (long side at most the network size,
//! aspect kept) centred, unscaled, in the square network input and padded with
//! [`PAD_VALUE`]. The loader, the augmentation, prediction and the mapping of detections back
//! to image pixels all take their offsets from one [`Letterbox`].

use fusekit_cache::format::PAD_VALUE;
use fusekit_cache::{Cache, Sample};

/// How an image was fitted into a square network input: resized from its original size to its
/// stored size (per-axis [`gain`](Self::gain)), then centred without scaling in a `size` x
/// `size` square, shifted by [`pad`](Self::pad) (left, top).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Letterbox {
    original: [u32; 2],
    stored: [u32; 2],
    size: u32,
}

impl Letterbox {
    /// The letterbox of an `original` (width, height) image stored at `stored` (width, height;
    /// long side equal to `size`, as the cache stores it) and centred in a `size` x `size`
    /// input.
    pub fn new(original: [u32; 2], stored: [u32; 2], size: u32) -> Self {
        Self {
            original,
            stored,
            size,
        }
    }

    /// The letterbox of cache sample `index` at the cache's `imgsz`, from its index row.
    pub fn of_sample(cache: &Cache, index: usize) -> Self {
        let row = cache.row(index);
        Self::new(
            [row.source_width, row.source_height],
            [row.width, row.height],
            cache.meta().imgsz,
        )
    }

    /// Original width and height.
    pub fn original(&self) -> [u32; 2] {
        self.original
    }

    /// Stored width and height.
    pub fn stored(&self) -> [u32; 2] {
        self.stored
    }

    /// Side of the square network input.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Left and top padding in whole network pixels: where the stored image's first pixel
    /// lands.
    pub fn offsets(&self) -> [usize; 2] {
        self.stored
            .map(|v| (self.size.saturating_sub(v) / 2) as usize)
    }

    /// Left and top padding in network pixels.
    pub fn pad(&self) -> [f32; 2] {
        self.offsets().map(|v| v as f32)
    }

    /// Scale from original to network pixels along x and y: the stored size over the original
    /// size. The cache rounds the short side up to whole pixels, so the two can differ a little
    /// (200 x 120 at 64 is stored as 64 x 39: 0.32 along x, 0.325 along y).
    pub fn gain(&self) -> [f32; 2] {
        [0, 1].map(|i| self.stored[i] as f32 / self.original[i].max(1) as f32)
    }

    /// `bbox` (x1, y1, x2, y2 in network pixels) in original image pixels, clipped to the image.
    pub fn to_original(&self, bbox: [f32; 4]) -> [f32; 4] {
        let ([w, h], pad, gain) = (self.original.map(|v| v as f32), self.pad(), self.gain());
        let x = |v: f32| ((v - pad[0]) / gain[0]).clamp(0.0, w);
        let y = |v: f32| ((v - pad[1]) / gain[1]).clamp(0.0, h);
        [x(bbox[0]), y(bbox[1]), x(bbox[2]), y(bbox[3])]
    }

    /// Copies `sample` (stored at this letterbox's stored size) into `out` (`planes x size x
    /// size`), centred at [`offsets`](Self::offsets), padding with [`PAD_VALUE`]; no scaling.
    pub fn place(&self, sample: &Sample<'_>, out: &mut [u8]) {
        debug_assert_eq!(
            [sample.width, sample.height],
            self.stored.map(|v| v as usize),
            "the sample is stored at another size"
        );
        let size = self.size as usize;
        let (h, w) = (sample.height.min(size), sample.width.min(size));
        let [left, top] = self.offsets();
        for (k, plane_out) in out.chunks_exact_mut(size * size).enumerate() {
            let plane = sample.plane(k);
            plane_out[..top * size].fill(PAD_VALUE);
            for y in 0..h {
                let row = &mut plane_out[(top + y) * size..(top + y + 1) * size];
                row[..left].fill(PAD_VALUE);
                row[left..left + w].copy_from_slice(&plane[y * sample.width..y * sample.width + w]);
                row[left + w..].fill(PAD_VALUE);
            }
            plane_out[(top + h) * size..].fill(PAD_VALUE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A box in original pixels as the cache and loader place it in the network input: its
    /// normalised coordinates times the stored size, plus the padding.
    fn forward(original: [u32; 2], scaled: [u32; 2], size: u32, bbox: [f32; 4]) -> [f32; 4] {
        let pad = scaled.map(|v| ((size - v) / 2) as f32);
        std::array::from_fn(|i| {
            let axis = i % 2;
            bbox[i] / original[axis] as f32 * scaled[axis] as f32 + pad[axis]
        })
    }

    fn assert_near(got: [f32; 4], expected: [f32; 4], tolerance: f32) {
        assert!(
            got.iter()
                .zip(expected)
                .all(|(g, e)| (g - e).abs() <= tolerance),
            "{got:?} vs {expected:?}"
        );
    }

    /// (original, stored size at 64 as the cache's `stored_size` gives it): long side 64, the
    /// other rounded up.
    const CASES: [([u32; 2], [u32; 2]); 4] = [
        // Landscape: padding top and bottom; 120 x 0.32 = 38.4 is stored as 39 rows.
        ([200, 120], [64, 39]),
        // Portrait: padding left and right.
        ([120, 200], [39, 64]),
        // An exact fit (no rounding) and an upscaled small image.
        ([640, 480], [64, 48]),
        ([40, 24], [64, 39]),
    ];

    #[test]
    fn boxes_map_back_to_original_pixels_in_portrait_and_landscape() {
        for (original, scaled) in CASES {
            let fit = Letterbox::new(original, scaled, 64);
            let [w, h] = original.map(|v| v as f32);
            let boxes = [
                [0.1 * w, 0.15 * h, 0.4 * w, 0.5 * h],
                [0.55 * w, 0.6 * h, 0.97 * w, 0.9 * h],
                [0.0, 0.0, w, h],
            ];
            for bbox in boxes {
                let network = forward(original, scaled, 64, bbox);
                assert_near(fit.to_original(network), bbox, 0.5);
            }
        }
        // The padding is on the short axis only.
        assert_eq!(Letterbox::new([200, 120], [64, 39], 64).pad(), [0.0, 12.0]);
        assert_eq!(Letterbox::new([120, 200], [39, 64], 64).pad(), [12.0, 0.0]);
    }

    #[test]
    fn boxes_reaching_into_the_padding_are_clipped_to_the_image() {
        for (original, scaled) in CASES {
            let fit = Letterbox::new(original, scaled, 64);
            let [w, h] = original.map(|v| v as f32);
            // The whole network input, padding included, is the whole image.
            assert_near(
                fit.to_original([-3.0, -3.0, 67.0, 67.0]),
                [0.0, 0.0, w, h],
                0.0,
            );
            // A box crossing the left/top edge keeps its inner corner.
            let inner = [0.5 * w, 0.5 * h];
            let network = forward(original, scaled, 64, [0.0, 0.0, inner[0], inner[1]]);
            let crossing = [network[0] - 5.0, network[1] - 5.0, network[2], network[3]];
            assert_near(
                fit.to_original(crossing),
                [0.0, 0.0, inner[0], inner[1]],
                0.5,
            );
        }
    }
}
