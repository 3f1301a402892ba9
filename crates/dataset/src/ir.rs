//! IR normalisation: how an IR image of any bit depth becomes the 8-bit plane that is cached
//! and fed to the network. One function, [`normalise_ir`], used by the cache builder, predict
//! and lint alike.

use image::{DynamicImage, GrayImage, ImageBuffer, Luma, Rgb, RgbImage};

/// How IR samples are mapped onto 0-255: `auto`, `minmax`, `fixed:LO,HI` or `none` in data
/// yamls (`ir_norm:`) and on the command line (`--ir-norm`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum IrNorm {
    /// 8-bit images unchanged; 16-bit images stretched per image from their 1st to their 99th
    /// percentile onto 0-255.
    #[default]
    Auto,
    /// Every image stretched per image from its smallest to its largest sample onto 0-255.
    MinMax,
    /// The same linear mapping for every image: sample `lo` to 0, sample `hi` to 255 (in the
    /// image's own units: raw counts for 16-bit images), clamped outside; for cameras where
    /// absolute temperature matters.
    Fixed {
        /// The sample mapped to 0.
        lo: u16,
        /// The sample mapped to 255; above `lo`.
        hi: u16,
    },
    /// 16-bit images shifted to 8 bits (their high byte); 8-bit images unchanged.
    None,
}

/// The percentiles `auto` stretches between, in percent.
const AUTO_PERCENTILES: (f64, f64) = (1.0, 99.0);

impl IrNorm {
    /// What the mode does to an image of `bits` bits per sample, for messages.
    pub fn describe(self, bits: u8) -> String {
        match (self, bits) {
            (IrNorm::Auto | IrNorm::None, 8) => "8-bit samples kept as they are".into(),
            (IrNorm::Auto, _) => "stretched per image from the 1st to the 99th percentile".into(),
            (IrNorm::MinMax, _) => "stretched per image from its minimum to its maximum".into(),
            (IrNorm::Fixed { lo, hi }, _) => format!("mapped from {lo}..{hi} onto 0..255"),
            (IrNorm::None, _) => format!("shifted right by {} bits", bits.saturating_sub(8)),
        }
    }

    /// Whether 8-bit images pass unchanged.
    fn keeps_8_bit(self) -> bool {
        matches!(self, IrNorm::Auto | IrNorm::None)
    }

    /// The lookup table from every sample of `bits` bits to its 8-bit value, for an image
    /// whose samples have the histogram `histogram`.
    fn table(self, histogram: &[u64], bits: u8) -> Vec<u8> {
        let size = 1u32 << bits;
        let (lo, hi) = match self {
            _ if bits == 8 && self.keeps_8_bit() => return (0..size).map(|v| v as u8).collect(),
            IrNorm::None => return (0..size).map(|v| (v >> (bits - 8)) as u8).collect(),
            IrNorm::Fixed { lo, hi } => (u32::from(lo), u32::from(hi)),
            IrNorm::Auto => (
                percentile(histogram, AUTO_PERCENTILES.0),
                percentile(histogram, AUTO_PERCENTILES.1),
            ),
            IrNorm::MinMax => (percentile(histogram, 0.0), percentile(histogram, 100.0)),
        };
        // A flat image keeps its one value at 0 rather than dividing by zero.
        let span = f64::from(hi.max(lo + 1) - lo);
        (0..size)
            .map(|v| (f64::from(v.clamp(lo, lo + span as u32) - lo) * 255.0 / span).round() as u8)
            .collect()
    }
}

/// The smallest sample at or below which `percent` of the samples lie (0: the minimum, 100:
/// the maximum).
fn percentile(histogram: &[u64], percent: f64) -> u32 {
    let total: u64 = histogram.iter().sum();
    if percent <= 0.0 {
        return histogram.iter().position(|&n| n > 0).unwrap_or(0) as u32;
    }
    let wanted = ((total as f64 * percent / 100.0).ceil() as u64).clamp(1, total.max(1));
    let mut seen = 0;
    for (value, &n) in histogram.iter().enumerate() {
        seen += n;
        if seen >= wanted {
            return value as u32;
        }
    }
    histogram.len().saturating_sub(1) as u32
}

impl std::fmt::Display for IrNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IrNorm::Auto => f.write_str("auto"),
            IrNorm::MinMax => f.write_str("minmax"),
            IrNorm::Fixed { lo, hi } => write!(f, "fixed:{lo},{hi}"),
            IrNorm::None => f.write_str("none"),
        }
    }
}

impl std::str::FromStr for IrNorm {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        match text {
            "auto" => return Ok(IrNorm::Auto),
            "minmax" => return Ok(IrNorm::MinMax),
            "none" => return Ok(IrNorm::None),
            _ => {}
        }
        let bad = || {
            format!(
                "ir_norm must be auto, minmax, none or fixed:LO,HI (samples 0-65535, LO < HI), not `{text}`"
            )
        };
        let (lo, hi) = text
            .strip_prefix("fixed:")
            .and_then(|range| range.split_once(','))
            .ok_or_else(bad)?;
        let sample = |v: &str| v.trim().parse::<u16>().map_err(|_| bad());
        let (lo, hi) = (sample(lo)?, sample(hi)?);
        if lo >= hi {
            return Err(bad());
        }
        Ok(IrNorm::Fixed { lo, hi })
    }
}

impl serde::Serialize for IrNorm {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for IrNorm {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Bits per sample of a decoded image: 8 or 16 (32-bit float images count as 16: the image
/// crate converts them to 16 bits, 0.0-1.0 onto 0-65535).
pub fn bits_per_sample(image: &DynamicImage) -> u8 {
    match image {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => 8,
        _ => 16,
    }
}

/// An IR image as fusekit caches it: 8 bits per sample after `norm`, grey (`Luma8`) when the
/// image has no colour channels, else `Rgb8` (alpha dropped). Colour images are mapped with
/// one range for all three channels.
pub fn normalise_ir(image: DynamicImage, norm: IrNorm) -> DynamicImage {
    let grey = !image.color().has_color();
    if bits_per_sample(&image) == 8 {
        if norm.keeps_8_bit() {
            return if grey {
                DynamicImage::ImageLuma8(image.into_luma8())
            } else {
                DynamicImage::ImageRgb8(image.into_rgb8())
            };
        }
        return if grey {
            let luma = image.into_luma8();
            let (w, h) = luma.dimensions();
            DynamicImage::ImageLuma8(
                GrayImage::from_raw(w, h, remap(luma.as_raw(), 8, norm)).expect("same size"),
            )
        } else {
            let rgb = image.into_rgb8();
            let (w, h) = rgb.dimensions();
            DynamicImage::ImageRgb8(
                RgbImage::from_raw(w, h, remap(rgb.as_raw(), 8, norm)).expect("same size"),
            )
        };
    }
    if grey {
        let luma: ImageBuffer<Luma<u16>, Vec<u16>> = image.into_luma16();
        let (w, h) = luma.dimensions();
        DynamicImage::ImageLuma8(
            GrayImage::from_raw(w, h, remap(luma.as_raw(), 16, norm)).expect("same size"),
        )
    } else {
        let rgb: ImageBuffer<Rgb<u16>, Vec<u16>> = image.into_rgb16();
        let (w, h) = rgb.dimensions();
        DynamicImage::ImageRgb8(
            RgbImage::from_raw(w, h, remap(rgb.as_raw(), 16, norm)).expect("same size"),
        )
    }
}

/// Samples of `bits` bits mapped to 8 bits by `norm`.
fn remap<T: Copy + Into<u32>>(samples: &[T], bits: u8, norm: IrNorm) -> Vec<u8> {
    let mut histogram = vec![0u64; 1 << bits];
    for &v in samples {
        histogram[v.into() as usize] += 1;
    }
    let table = norm.table(&histogram, bits);
    samples.iter().map(|&v| table[v.into() as usize]).collect()
}

/// Distinct values of a grey or colour 8-bit image's luma: the grey levels its cached IR plane
/// uses (for colour images, up to a level of rounding).
pub fn grey_levels(image: &DynamicImage) -> usize {
    grey_levels_of_rows(image, 1)
}

/// [`grey_levels`] counted on every `row_step`-th row only (a lower bound of the whole
/// image's count), then, when that finds fewer than `exact_below`, on every row: exact below
/// `exact_below`, and a quarter of the work for `row_step` 4 on images with more levels.
pub(crate) fn sampled_grey_levels(
    image: &DynamicImage,
    row_step: usize,
    exact_below: usize,
) -> usize {
    let sampled = grey_levels_of_rows(image, row_step);
    if sampled < exact_below {
        grey_levels_of_rows(image, 1)
    } else {
        sampled
    }
}

/// Distinct luma values on every `row_step`-th row, starting with the first.
fn grey_levels_of_rows(image: &DynamicImage, row_step: usize) -> usize {
    let mut seen = [false; 256];
    let width = image.width().max(1) as usize;
    match image {
        DynamicImage::ImageLuma8(luma) => luma
            .as_raw()
            .chunks_exact(width)
            .step_by(row_step)
            .flatten()
            .for_each(|&v| seen[usize::from(v)] = true),
        // Rec. 709 luma, as the image crate weighs it (up to its rounding), without allocating
        // a converted image.
        DynamicImage::ImageRgb8(rgb) => rgb
            .as_raw()
            .chunks_exact(width * 3)
            .step_by(row_step)
            .flat_map(|row| row.chunks_exact(3))
            .for_each(|p| {
                let luma =
                    (2126 * u32::from(p[0]) + 7152 * u32::from(p[1]) + 722 * u32::from(p[2]))
                        / 10_000;
                seen[luma as usize] = true;
            }),
        other => other
            .to_luma8()
            .as_raw()
            .chunks_exact(width)
            .step_by(row_step)
            .flatten()
            .for_each(|&v| seen[usize::from(v)] = true),
    }
    seen.iter().filter(|&&s| s).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_grey_levels_are_exact_when_few() {
        // 100 levels, each on one row: every fourth row holds 25 of them.
        let rows = GrayImage::from_fn(8, 100, |_, y| image::Luma([y as u8]));
        let image = DynamicImage::ImageLuma8(rows);
        assert_eq!(grey_levels(&image), 100);
        assert_eq!(sampled_grey_levels(&image, 4, 20), 25);
        assert_eq!(sampled_grey_levels(&image, 4, 64), 100);
    }

    fn ramp16(values: &[u16]) -> DynamicImage {
        DynamicImage::ImageLuma16(
            ImageBuffer::from_raw(values.len() as u32, 1, values.to_vec()).unwrap(),
        )
    }

    fn samples(image: &DynamicImage) -> Vec<u8> {
        image.as_bytes().to_vec()
    }

    #[test]
    fn parses_and_prints_every_mode() {
        for text in ["auto", "minmax", "none", "fixed:27000,31000"] {
            let mode: IrNorm = text.parse().unwrap();
            assert_eq!(mode.to_string(), text);
        }
        assert_eq!(IrNorm::default(), IrNorm::Auto);
        for bad in [
            "",
            "Auto",
            "fixed:5,5",
            "fixed:9,2",
            "fixed:1",
            "fixed:0,70000",
            "stretch",
        ] {
            let err = bad.parse::<IrNorm>().unwrap_err();
            assert!(err.contains("fixed:LO,HI"), "{bad}: {err}");
        }
    }

    #[test]
    fn sixteen_bit_modes() {
        // 100 samples: 28000 + 10 * i.
        let values: Vec<u16> = (0..100).map(|i| 28_000 + 10 * i).collect();
        let image = ramp16(&values);
        let auto = samples(&normalise_ir(image.clone(), IrNorm::Auto));
        // The 1st percentile (28000) to 0, the 99th (28980) to 255, the top sample clamped.
        assert_eq!((auto[0], auto[98], auto[99]), (0, 255, 255));
        assert_eq!(auto[49], (490.0f64 * 255.0 / 980.0).round() as u8);
        let minmax = samples(&normalise_ir(image.clone(), IrNorm::MinMax));
        assert_eq!((minmax[0], minmax[99]), (0, 255));
        let fixed = samples(&normalise_ir(
            image.clone(),
            IrNorm::Fixed {
                lo: 27_990,
                hi: 28_500,
            },
        ));
        assert_eq!((fixed[0], fixed[51], fixed[99]), (5, 255, 255));
        let none = samples(&normalise_ir(image, IrNorm::None));
        assert_eq!(
            (none[0], none[99]),
            ((28_000 >> 8) as u8, (28_990 >> 8) as u8)
        );
        assert_eq!(grey_levels(&normalise_ir(ramp16(&values), IrNorm::None)), 5);
        assert_eq!(
            grey_levels(&normalise_ir(ramp16(&values), IrNorm::Auto)),
            99
        );
    }

    #[test]
    fn eight_bit_images_change_only_under_minmax_and_fixed() {
        let grey = DynamicImage::ImageLuma8(GrayImage::from_fn(4, 1, |x, _| Luma([100 + x as u8])));
        for mode in [IrNorm::Auto, IrNorm::None] {
            assert_eq!(
                samples(&normalise_ir(grey.clone(), mode)),
                [100, 101, 102, 103]
            );
        }
        assert_eq!(
            samples(&normalise_ir(grey.clone(), IrNorm::MinMax)),
            [0, 85, 170, 255]
        );
        let fixed = IrNorm::Fixed { lo: 101, hi: 102 };
        assert_eq!(samples(&normalise_ir(grey, fixed)), [0, 0, 255, 255]);
    }

    #[test]
    fn grey_levels_of_colour_images_count_their_luma() {
        // Grey content in three channels (LLVIP's IR JPEGs): exactly its grey values.
        let grey = GrayImage::from_fn(64, 4, |x, _| Luma([(x * 3) as u8]));
        let as_rgb = DynamicImage::ImageRgb8(DynamicImage::ImageLuma8(grey.clone()).to_rgb8());
        assert_eq!(grey_levels(&as_rgb), 64);
        assert_eq!(grey_levels(&DynamicImage::ImageLuma8(grey)), 64);
        // Colour: the image crate's luma, up to its rounding.
        let rgb = DynamicImage::ImageRgb8(RgbImage::from_fn(64, 64, |x, y| {
            Rgb([(x * 4) as u8, (y * 4) as u8, ((x * y) % 256) as u8])
        }));
        let luma = DynamicImage::ImageLuma8(rgb.to_luma8());
        assert!(grey_levels(&rgb).abs_diff(grey_levels(&luma)) <= 2);
    }

    #[test]
    fn colour_and_flat_images() {
        let rgb16 = DynamicImage::ImageRgb16(ImageBuffer::from_fn(2, 1, |x, _| {
            Rgb([1000 * (x as u16 + 1), 1500, 2000])
        }));
        let out = normalise_ir(rgb16, IrNorm::MinMax);
        assert!(matches!(out, DynamicImage::ImageRgb8(_)));
        assert_eq!(samples(&out), [0, 128, 255, 255, 128, 255]);
        let flat = ramp16(&[30_000; 8]);
        assert_eq!(samples(&normalise_ir(flat, IrNorm::Auto)), [0; 8]);
    }
}
