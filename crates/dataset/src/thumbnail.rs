//! A small brightness image of a decoded picture, for comparing the geometry of two images
//! (lint's misregistration check) without keeping or decoding them again.

use image::DynamicImage;

/// The shorter side of a thumbnail is reduced to this many pixels, or to between this and
/// twice it: large enough to place edges to a fraction of a thumbnail pixel, small enough
/// that comparing two costs little beside decoding them.
pub const THUMBNAIL_SIDE: u32 = 128;

/// The longer side of a thumbnail is at most this many pixels (very wide images are reduced
/// further).
const MAX_THUMBNAIL_SIDE: u32 = 512;

/// Images whose thumbnail would have a side shorter than this get none: too little to compare.
pub const MIN_THUMBNAIL_SIDE: u32 = 96;

/// A brightness image reduced by an integer factor: each pixel is the mean of the colour
/// samples of a `scale` x `scale` block of the original (alpha ignored), in the original's
/// sample units (0-255 for 8-bit images, 0-65535 for 16-bit ones).
#[derive(Debug, Clone, PartialEq)]
pub struct Thumbnail {
    /// Width in thumbnail pixels.
    pub width: usize,
    /// Height in thumbnail pixels.
    pub height: usize,
    /// Original pixels per thumbnail pixel, along each axis.
    pub scale: u32,
    /// Row-major brightness values, `width * height` of them.
    pub values: Vec<f32>,
}

impl Thumbnail {
    /// The thumbnail of `image`, reduced by the largest whole factor that keeps its shorter
    /// side at least [`THUMBNAIL_SIDE`] (and its longer one at most 512); `None` when a side
    /// would be shorter than [`MIN_THUMBNAIL_SIDE`].
    pub fn of(image: &DynamicImage) -> Option<Thumbnail> {
        let (width, height) = (image.width(), image.height());
        let scale = (width.min(height) / THUMBNAIL_SIDE)
            .max(width.max(height).div_ceil(MAX_THUMBNAIL_SIDE))
            .max(1);
        if width / scale < MIN_THUMBNAIL_SIDE || height / scale < MIN_THUMBNAIL_SIDE {
            return None;
        }
        let plan = Plan {
            width: width as usize,
            channels: image.color().channel_count() as usize,
            scale: scale as usize,
            thumb_width: (width / scale) as usize,
            thumb_height: (height / scale) as usize,
        };
        let values = match image {
            DynamicImage::ImageLuma8(i) => plan.reduce(i.as_raw()),
            DynamicImage::ImageRgb8(i) => plan.reduce(i.as_raw()),
            DynamicImage::ImageLuma16(i) => plan.reduce(i.as_raw()),
            DynamicImage::ImageRgb16(i) => plan.reduce(i.as_raw()),
            // Alpha and floating-point images: their colour channels, as 16-bit samples.
            other => Plan {
                channels: 3,
                ..plan
            }
            .reduce(other.to_rgb16().as_raw()),
        };
        Some(Thumbnail {
            width: plan.thumb_width,
            height: plan.thumb_height,
            scale,
            values,
        })
    }
}

/// How an image without alpha is reduced to its thumbnail.
#[derive(Clone, Copy)]
struct Plan {
    width: usize,
    channels: usize,
    scale: usize,
    thumb_width: usize,
    thumb_height: usize,
}

impl Plan {
    /// Block means of `samples` (interleaved, `channels` per pixel, no alpha); the pixels
    /// past the last whole block of a row or column are left out.
    fn reduce<T: Copy + Into<u32>>(&self, samples: &[T]) -> Vec<f32> {
        let row_len = self.width * self.channels;
        let block_len = self.scale * self.channels;
        let mut sums = vec![0u64; self.thumb_width * self.thumb_height];
        for (y, row) in samples
            .chunks_exact(row_len)
            .take(self.thumb_height * self.scale)
            .enumerate()
        {
            let out = &mut sums[(y / self.scale) * self.thumb_width..][..self.thumb_width];
            for (sum, block) in out.iter_mut().zip(row.chunks_exact(block_len)) {
                *sum += u64::from(block.iter().map(|&v| v.into()).sum::<u32>());
            }
        }
        let per_block = (self.scale * self.scale * self.channels) as f32;
        sums.into_iter().map(|s| s as f32 / per_block).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_means_of_grey_and_colour_images() {
        let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(641, 300, |x, _| {
            image::Luma([if x < 320 { 10 } else { 210 }])
        }));
        let thumb = Thumbnail::of(&grey).unwrap();
        assert_eq!((thumb.width, thumb.height, thumb.scale), (320, 150, 2));
        assert_eq!(thumb.values[0], 10.0);
        assert_eq!(thumb.values[159], 10.0);
        assert_eq!(thumb.values[160], 210.0);
        let colour = DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(100, 96, |_, _| {
            image::Rgb([30_000u16, 0, 60_000])
        }));
        let thumb = Thumbnail::of(&colour).unwrap();
        assert_eq!((thumb.width, thumb.height, thumb.scale), (100, 96, 1));
        assert!(thumb.values.iter().all(|&v| v == 30_000.0));
        let alpha = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            100,
            100,
            image::Rgba([255, 255, 255, 0]),
        ));
        assert!(Thumbnail::of(&alpha).unwrap().values[0] > 65_000.0);
        assert_eq!(Thumbnail::of(&DynamicImage::new_luma8(400, 95)), None);
        assert_eq!(
            Thumbnail::of(&DynamicImage::new_luma8(2000, 400))
                .unwrap()
                .scale,
            4
        );
    }
}
