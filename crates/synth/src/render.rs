//! Drawing one night-time street frame in RGB and IR.

use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ExtendedColorType, ImageBuffer, ImageFormat, Luma, Rgb};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{FileFormat, SynthOptions};

/// An 8-bit image, row-major, interleaved channels.
pub(crate) struct Raster {
    pub width: u32,
    pub height: u32,
    pub channels: u8,
    pub data: Vec<u8>,
}

/// A labelled object in normalised YOLO coordinates.
pub(crate) struct Object {
    pub class: u32,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// One rendered pair with its labels.
pub(crate) struct Frame {
    pub rgb: Raster,
    pub ir: Raster,
    /// With `ir_bits` 16: the IR image as raw sensor counts, one grey sample per pixel.
    pub ir_counts: Option<Vec<u16>>,
    pub objects: Vec<Object>,
}

/// Raw counts of a 16-bit IR frame: `COUNTS_AT_ZERO + COUNTS_PER_LEVEL * heat`, where heat is
/// the 8-bit frame's 0-255 scale: the background near 28,000 counts, warm objects a few hundred
/// above it, as a radiometric camera's raw output.
const COUNTS_AT_ZERO: f64 = 27_400.0;
/// See [`COUNTS_AT_ZERO`].
const COUNTS_PER_LEVEL: f64 = 6.0;

impl Frame {
    /// The YOLO txt label file.
    pub fn label_text(&self) -> String {
        self.objects
            .iter()
            .map(|o| format!("{} {:.6} {:.6} {:.6} {:.6}\n", o.class, o.x, o.y, o.w, o.h))
            .collect()
    }
}

/// A walker or other object that moves through a scene frame by frame.
struct Track {
    class: u32,
    x0: f64,
    vx: f64,
    bottom: f64,
    height: f64,
    aspect: f64,
    warmth: f64,
}

struct Scene {
    horizon: f64,
    buildings: Vec<[f64; 5]>,
    lamps: Vec<[f64; 3]>,
    tint: [f64; 3],
    tracks: Vec<Track>,
}

fn scene(options: &SynthOptions, scene: u64) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(
        options.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ scene.wrapping_add(0x5CE4E),
    );
    let horizon: f64 = rng.random_range(0.3..0.5);
    let buildings = (0..rng.random_range(3..7))
        .map(|_| {
            let x = rng.random_range(0.0..0.9);
            [
                x,
                x + rng.random_range(0.08..0.25),
                horizon - rng.random_range(0.1..0.28),
                rng.random_range(0.8..1.4),
                rng.random_range(-25.0..15.0),
            ]
        })
        .collect();
    let lamps = (0..rng.random_range(1..4))
        .map(|_| {
            [
                rng.random_range(0.05..0.95),
                horizon - rng.random_range(0.05..0.2),
                rng.random_range(0.02..0.05),
            ]
        })
        .collect();
    let tint = [rng.random_range(1.0..1.3), 1.0, rng.random_range(0.6..0.9)];
    let classes = options.names.len() as u32;
    let tracks = (0..rng.random_range(1..5))
        .map(|_| {
            let class = rng.random_range(0..classes);
            let height: f64 = rng.random_range(0.14..0.4);
            Track {
                class,
                x0: rng.random_range(0.1..0.9),
                vx: rng.random_range(-0.004..0.004),
                bottom: rng.random_range((horizon + height).min(0.97)..0.98),
                height,
                aspect: 0.38 * (1.0 + f64::from(class)) * options.height as f64
                    / options.width as f64,
                warmth: rng.random_range(150.0..215.0) - 25.0 * f64::from(class),
            }
        })
        .collect();
    Scene {
        horizon,
        buildings,
        lamps,
        tint,
        tracks,
    }
}

/// Renders pair `index` of the dataset described by `options`, its IR content moved by
/// `ir_shift` pixels (right, down) against the RGB content.
pub(crate) fn render_pair(options: &SynthOptions, index: usize, ir_shift: (i32, i32)) -> Frame {
    let per_scene = options.pairs.div_ceil(options.scenes.max(1)).max(1);
    let (scene_id, frame) = (index / per_scene, index % per_scene);
    let scene = scene(options, scene_id as u64);
    let (width, height) = (options.width as usize, options.height as usize);
    let objects: Vec<(Object, f64)> = scene
        .tracks
        .iter()
        .map(|t| {
            let w = t.height * t.aspect;
            // Walk back and forth inside the frame.
            let span = 1.0 - w;
            let raw = (t.x0 - w / 2.0 + t.vx * frame as f64).rem_euclid(2.0 * span);
            let left = if raw > span { 2.0 * span - raw } else { raw };
            (
                Object {
                    class: t.class,
                    x: left + w / 2.0,
                    y: t.bottom - t.height / 2.0,
                    w,
                    h: t.height,
                },
                t.warmth,
            )
        })
        .collect();

    let mut rng = ChaCha8Rng::seed_from_u64(
        options.seed ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
    );
    let mut rgb = vec![0u8; width * height * 3];
    let mut ir = vec![0u8; width * height];
    let mut ir_counts = (options.ir_bits == 16).then(|| vec![0u16; width * height]);
    // Light (RGB) and heat (IR) of the scene at a point in normalised coordinates.
    let shade = |x: f64, y: f64| -> (f64, f64) {
        let (mut light, mut heat) = if y < scene.horizon {
            (14.0 + 10.0 * y, 45.0 + 20.0 * y)
        } else {
            (26.0 + 8.0 * y, 105.0 + 15.0 * y)
        };
        for b in &scene.buildings {
            if x >= b[0] && x < b[1] && y >= b[2] && y < scene.horizon {
                light = 20.0 * b[3];
                heat = 90.0 + b[4];
            }
        }
        for l in &scene.lamps {
            let d2 = ((x - l[0]).powi(2) + (y - l[1]).powi(2)) / (l[2] * l[2]);
            light += 120.0 * (-d2).exp();
        }
        for (o, warmth) in &objects {
            let d2 = ((x - o.x) / (o.w / 2.0)).powi(2) + ((y - o.y) / (o.h / 2.0)).powi(2);
            if d2 < 1.0 {
                light += 7.0;
                heat = heat.max(warmth * (1.0 - 0.35 * d2));
            }
        }
        (light, heat)
    };
    // The IR camera sees the scene moved by `ir_shift` pixels.
    let (shift_x, shift_y) = (
        f64::from(ir_shift.0) / width as f64,
        f64::from(ir_shift.1) / height as f64,
    );
    for py in 0..height {
        let y = (py as f64 + 0.5) / height as f64;
        for px in 0..width {
            let x = (px as f64 + 0.5) / width as f64;
            let (light, mut heat) = shade(x, y);
            if ir_shift != (0, 0) {
                heat = shade(x - shift_x, y - shift_y).1;
            }
            let noise = rng.next_u32().to_le_bytes();
            let i = py * width + px;
            for c in 0..3 {
                let v = light * scene.tint[c] + f64::from(noise[c] % 19) - 9.0;
                rgb[i * 3 + c] = v.clamp(0.0, 255.0) as u8;
            }
            ir[i] = (heat + f64::from(noise[3] % 7) - 3.0).clamp(0.0, 255.0) as u8;
            if let Some(counts) = &mut ir_counts {
                let noise = f64::from(noise[3] % 25) - 12.0;
                counts[i] = (COUNTS_AT_ZERO + COUNTS_PER_LEVEL * heat + noise).round() as u16;
            }
        }
    }
    let ir = if options.ir_channels == 3 {
        ir.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        ir
    };
    Frame {
        rgb: Raster {
            width: options.width,
            height: options.height,
            channels: 3,
            data: rgb,
        },
        ir: Raster {
            width: options.width,
            height: options.height,
            channels: options.ir_channels,
            data: ir,
        },
        ir_counts,
        objects: objects.into_iter().map(|(o, _)| o).collect(),
    }
}

/// A raster in `format` (`quality` for JPEG).
pub(crate) fn encode(raster: &Raster, format: FileFormat, quality: u8) -> Vec<u8> {
    if format == FileFormat::Jpeg {
        return encode_jpeg(raster, quality);
    }
    let (w, h) = (raster.width, raster.height);
    let data = raster.data.clone();
    let image = if raster.channels == 1 {
        DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, data).expect("sized raster"))
    } else {
        DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, data).expect("sized raster"))
    };
    encode_image(&image, format)
}

/// 16-bit grey IR counts (`channels` 1, or 3 equal channels) as a PNG or TIFF.
pub(crate) fn encode_counts(
    counts: &[u16],
    (width, height): (u32, u32),
    channels: u8,
    format: FileFormat,
) -> Vec<u8> {
    let image = if channels == 1 {
        DynamicImage::ImageLuma16(
            ImageBuffer::<Luma<u16>, _>::from_raw(width, height, counts.to_vec())
                .expect("sized counts"),
        )
    } else {
        let data = counts.iter().flat_map(|&v| [v, v, v]).collect();
        DynamicImage::ImageRgb16(
            ImageBuffer::<Rgb<u16>, _>::from_raw(width, height, data).expect("sized counts"),
        )
    };
    encode_image(&image, format)
}

fn encode_image(image: &DynamicImage, format: FileFormat) -> Vec<u8> {
    let format = match format {
        FileFormat::Png => ImageFormat::Png,
        FileFormat::Tiff => ImageFormat::Tiff,
        FileFormat::Jpeg => ImageFormat::Jpeg,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut out, format)
        .expect("encoding an in-memory image of valid size cannot fail");
    out.into_inner()
}

/// Baseline JPEG of a raster.
pub(crate) fn encode_jpeg(raster: &Raster, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let color = if raster.channels == 1 {
        ExtendedColorType::L8
    } else {
        ExtendedColorType::Rgb8
    };
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode(&raster.data, raster.width, raster.height, color)
        .expect("encoding an in-memory raster of valid size cannot fail");
    out
}
