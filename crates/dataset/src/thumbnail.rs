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
            DynamicImage::ImageLuma8(i) => plan.reduce_8_bit(i.as_raw()),
            DynamicImage::ImageRgb8(i) => plan.reduce_8_bit(i.as_raw()),
            DynamicImage::ImageLuma16(i) => plan.reduce::<u16, u32>(i.as_raw()),
            DynamicImage::ImageRgb16(i) => plan.reduce::<u16, u32>(i.as_raw()),
            // Alpha and floating-point images: their colour channels, as 16-bit samples.
            other => Plan {
                channels: 3,
                ..plan
            }
            .reduce::<u16, u32>(other.to_rgb16().as_raw()),
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
    /// [`Plan::reduce`] of 8-bit samples, with 16-bit column sums (twice as many per vector
    /// instruction) while `scale` rows of 255 fit in them.
    fn reduce_8_bit(&self, samples: &[u8]) -> Vec<f32> {
        if self.scale * usize::from(u8::MAX) <= usize::from(u16::MAX) {
            self.reduce::<u8, u16>(samples)
        } else {
            self.reduce::<u8, u32>(samples)
        }
    }

    /// Block means of `samples` (interleaved, `channels` per pixel, no alpha); the pixels
    /// past the last whole block of a row or column are left out. Each band of `scale` rows
    /// is first summed per column in `Sum` (a loop the compiler vectorises; `Sum` must hold
    /// `scale` samples), then per block.
    fn reduce<T, Sum>(&self, samples: &[T]) -> Vec<f32>
    where
        T: Copy + Into<Sum>,
        Sum: Copy + Default + std::ops::AddAssign + Into<u64>,
    {
        let row_len = self.width * self.channels;
        let block_len = self.scale * self.channels;
        let used = self.thumb_width * block_len;
        let per_block = (self.scale * block_len) as f32;
        let mut column_sums = vec![Sum::default(); used];
        let mut values = Vec::with_capacity(self.thumb_width * self.thumb_height);
        for band in samples
            .chunks_exact(row_len * self.scale)
            .take(self.thumb_height)
        {
            column_sums.fill(Sum::default());
            for row in band.chunks_exact(row_len) {
                for (sum, &sample) in column_sums.iter_mut().zip(&row[..used]) {
                    *sum += sample.into();
                }
            }
            values.extend(
                column_sums
                    .chunks_exact(block_len)
                    .map(|block| block.iter().map(|&s| s.into()).sum::<u64>() as f32 / per_block),
            );
        }
        values
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
