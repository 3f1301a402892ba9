//! Boxes stay on their objects through augmentation: a cache of dark images with bright
//! rectangles (the same rectangles in RGB and IR, labelled exactly) goes through the loader
//! with mosaic, scale, translation and flips; in every output plane each box must be filled by
//! its object and every object pixel must lie in a box.

use std::path::Path;
use std::sync::Arc;

use fusekit_cache::format::PAD_VALUE;
use fusekit_cache::{BuildInput, BuildOptions, Cache, IrChannels, IrNorm, MapMode, build};
use fusekit_loader::{Augment, Batch, Loader, LoaderOptions};

const IMGSZ: usize = 128;
/// Background and object values of the R, G, B and IR planes.
const BACKGROUND: [u8; 4] = [20, 40, 10, 15];
const OBJECT: [u8; 4] = [230, 215, 245, 240];

/// A source image: its size and its rectangles as (class, x0, y0, x1, y1) in source pixels
/// (end exclusive). Rectangles sit off-centre and apart, so that a flip or a shift moves them
/// onto background; sources at twice `IMGSZ` use even coordinates, so the builder's 2x2 area
/// resize keeps their edges sharp.
struct Scene {
    width: u32,
    height: u32,
    objects: Vec<(u32, u32, u32, u32, u32)>,
}

fn scenes() -> Vec<Scene> {
    let scene = |width, height, objects| Scene {
        width,
        height,
        objects,
    };
    vec![
        scene(128, 96, vec![(0, 10, 14, 40, 40), (1, 70, 50, 100, 86)]),
        scene(96, 128, vec![(1, 8, 80, 30, 120)]),
        scene(256, 192, vec![(0, 20, 30, 80, 70), (1, 160, 120, 220, 180)]),
        scene(128, 128, vec![(0, 90, 6, 120, 30)]),
        scene(112, 128, vec![(1, 6, 10, 26, 50), (0, 50, 96, 104, 118)]),
        scene(128, 80, vec![(0, 100, 40, 124, 76)]),
    ]
}

/// Writes the scenes as PNG pairs (RGB, grey IR) with their YOLO labels.
fn write_dataset(dir: &Path) -> Vec<BuildInput> {
    scenes()
        .iter()
        .enumerate()
        .map(|(i, scene)| {
            let inside = |x: u32, y: u32| {
                scene
                    .objects
                    .iter()
                    .any(|&(_, x0, y0, x1, y1)| x >= x0 && x < x1 && y >= y0 && y < y1)
            };
            let values = |x, y| if inside(x, y) { OBJECT } else { BACKGROUND };
            let rgb = image::RgbImage::from_fn(scene.width, scene.height, |x, y| {
                let v = values(x, y);
                image::Rgb([v[0], v[1], v[2]])
            });
            let ir = image::GrayImage::from_fn(scene.width, scene.height, |x, y| {
                image::Luma([values(x, y)[3]])
            });
            let (w, h) = (f64::from(scene.width), f64::from(scene.height));
            let labels: String = scene
                .objects
                .iter()
                .map(|&(class, x0, y0, x1, y1)| {
                    let (x0, y0, x1, y1) =
                        (f64::from(x0), f64::from(y0), f64::from(x1), f64::from(y1));
                    format!(
                        "{class} {:.7} {:.7} {:.7} {:.7}\n",
                        (x0 + x1) / 2.0 / w,
                        (y0 + y1) / 2.0 / h,
                        (x1 - x0) / w,
                        (y1 - y0) / h
                    )
                })
                .collect();
            let input = BuildInput {
                name: format!("images/{i}.png"),
                rgb: dir.join(format!("images/{i}.png")),
                ir: dir.join(format!("imagesIR/{i}.png")),
                label: Some(dir.join(format!("labels/{i}.txt"))),
            };
            for sub in ["images", "imagesIR", "labels"] {
                std::fs::create_dir_all(dir.join(sub)).unwrap();
            }
            rgb.save(&input.rgb).unwrap();
            ir.save(&input.ir).unwrap();
            std::fs::write(input.label.as_ref().unwrap(), labels).unwrap();
            input
        })
        .collect()
}

fn cache(dir: &Path) -> Arc<Cache> {
    let inputs = write_dataset(&dir.join("data"));
    let target = dir.join("cache/train.fkc");
    let options = BuildOptions {
        imgsz: IMGSZ as u32,
        mode: MapMode::Disk,
        ir_channels: IrChannels::Auto,
        ir_norm: IrNorm::Auto,
        split: "train".into(),
        names: vec!["a".into(), "b".into()],
        skipped: vec![],
        force: false,
    };
    build(&target, &inputs, &options, &|| {}).unwrap();
    let cache = Cache::open(&target, None).unwrap();
    assert_eq!(cache.meta().planes(), 4, "RGB and one grey IR plane");
    Arc::new(cache)
}

/// Pixels closer to the object value than to the padding value (bilinear sampling blends
/// objects with the background or the padding at their edges; neither blend passes this).
fn bright_mask(plane: &[u8], k: usize) -> Vec<bool> {
    let threshold = (u16::from(PAD_VALUE) + u16::from(OBJECT[k])) / 2;
    plane.iter().map(|&v| u16::from(v) > threshold).collect()
}

/// Checks image `i` of `batch` in every plane; returns the number of boxes whose interior was
/// checked. `largest` is the largest object area in output pixels that augmentation can
/// produce: the affine step drops a box clipped to a tenth of its area (or to 2 px), leaving
/// such a fragment unlabelled at the image border.
fn check_image(batch: &Batch, i: usize, largest: f32, context: &str) -> usize {
    let n = IMGSZ;
    let s = n as f32;
    let boxes: Vec<[f32; 4]> = batch
        .boxes
        .iter()
        .filter(|b| b.image as usize == i)
        .map(|b| {
            [
                (b.x - b.w / 2.0) * s,
                (b.y - b.h / 2.0) * s,
                (b.x + b.w / 2.0) * s,
                (b.y + b.h / 2.0) * s,
            ]
        })
        .collect();
    for b in &boxes {
        assert!(
            b[0] >= -1e-3 && b[1] >= -1e-3 && b[2] <= s + 1e-3 && b[3] <= s + 1e-3,
            "{context}: box {b:?} leaves the image"
        );
    }
    let mut checked = 0;
    for k in 0..batch.planes {
        let plane = &batch.image(i)[k * n * n..(k + 1) * n * n];
        let bright = bright_mask(plane, k);
        // Every box's interior (1 px in from its edges) is object.
        for b in &boxes {
            let pixels: Vec<bool> = (0..n * n)
                .filter(|p| {
                    let (u, v) = ((p % n) as f32 + 0.5, (p / n) as f32 + 0.5);
                    u > b[0] + 1.0 && u < b[2] - 1.0 && v > b[1] + 1.0 && v < b[3] - 1.0
                })
                .map(|p| bright[p])
                .collect();
            if pixels.is_empty() {
                continue;
            }
            let share = pixels.iter().filter(|&&x| x).count() as f32 / pixels.len() as f32;
            assert!(
                share >= 0.9,
                "{context} plane {k}: box {b:?} is only {:.0}% object",
                share * 100.0
            );
            checked += 1;
        }
        // Every object pixel lies in a box (1.5 px of slack for resampled edges), except
        // fragments of dropped boxes: small, at the image border.
        let outside: Vec<bool> = (0..n * n)
            .map(|p| {
                let (u, v) = ((p % n) as f32 + 0.5, (p / n) as f32 + 0.5);
                bright[p]
                    && !boxes.iter().any(|b| {
                        u > b[0] - 1.5 && u < b[2] + 1.5 && v > b[1] - 1.5 && v < b[3] + 1.5
                    })
            })
            .collect();
        for component in components(&outside, n) {
            let (mut x0, mut y0, mut x1, mut y1) = (n, n, 0, 0);
            for &p in &component {
                (x0, y0) = (x0.min(p % n), y0.min(p / n));
                (x1, y1) = (x1.max(p % n), y1.max(p / n));
            }
            let at_border = x0 == 0 || y0 == 0 || x1 == n - 1 || y1 == n - 1;
            let thin = x1 - x0 < 3 || y1 - y0 < 3;
            let small = (component.len() as f32) <= 0.1 * largest + 2.0 * largest.sqrt();
            assert!(
                at_border && (thin || small),
                "{context} plane {k}: {} object pixels in x {x0}..={x1}, y {y0}..={y1} are \
                 in no box (boxes {boxes:?})",
                component.len()
            );
        }
    }
    checked
}

/// 4-connected components of the set pixels of an `n` x `n` mask.
fn components(mask: &[bool], n: usize) -> Vec<Vec<usize>> {
    let mut seen = vec![false; mask.len()];
    let mut found = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        let mut stack = vec![start];
        let mut component = Vec::new();
        while let Some(p) = stack.pop() {
            component.push(p);
            let (x, y) = (p % n, p / n);
            let neighbours = [
                (x > 0).then(|| p - 1),
                (x + 1 < n).then(|| p + 1),
                (y > 0).then(|| p - n),
                (y + 1 < n).then(|| p + n),
            ];
            for q in neighbours.into_iter().flatten() {
                if mask[q] && !seen[q] {
                    seen[q] = true;
                    stack.push(q);
                }
            }
        }
        found.push(component);
    }
    found
}

#[test]
fn boxes_stay_on_their_objects_in_rgb_and_ir_through_augmentation() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let all: Vec<usize> = (0..cache.len()).collect();
    // No stored object is larger than 1200 px² (the largest, in scene 0, is 30 x 36 px).
    let stored_largest = 30.0 * 40.0;
    let off = Augment {
        fliplr: 0.0,
        mosaic: 0.0,
        scale: 0.0,
        translate: 0.0,
        hsv_h: 0.0,
        hsv_s: 0.0,
        hsv_v: 0.0,
    };
    let plain = Loader::new(
        cache.clone(),
        LoaderOptions {
            augment: Some(off.clone()),
            ..LoaderOptions::default()
        },
    )
    .make_batch(&all, 0)
    .unwrap();
    let configs = [
        ("none", off.clone()),
        (
            "mosaic",
            Augment {
                mosaic: 1.0,
                ..off.clone()
            },
        ),
        (
            "scale",
            Augment {
                scale: 0.5,
                ..off.clone()
            },
        ),
        (
            "translate",
            Augment {
                translate: 0.2,
                ..off.clone()
            },
        ),
        (
            "fliplr",
            Augment {
                fliplr: 0.5,
                ..off.clone()
            },
        ),
        (
            "all",
            Augment {
                fliplr: 0.5,
                mosaic: 1.0,
                scale: 0.5,
                translate: 0.2,
                ..off.clone()
            },
        ),
    ];
    for (name, augment) in configs {
        let largest = stored_largest * (1.0 + augment.scale).powi(2);
        let (mut checked, mut changed) = (0, 0);
        for seed in 1..=3 {
            let loader = Loader::new(
                cache.clone(),
                LoaderOptions {
                    augment: Some(augment.clone()),
                    seed,
                    ..LoaderOptions::default()
                },
            );
            for epoch in 0..4 {
                let batch = loader.make_batch(&all, epoch).unwrap();
                for i in 0..batch.len() {
                    let context = format!("{name}, seed {seed}, epoch {epoch}, sample {i}");
                    checked += check_image(&batch, i, largest, &context);
                    changed += usize::from(batch.image(i) != plain.image(i));
                }
            }
        }
        // Not vacuous: boxes were checked in all four planes, and (but for the control) the
        // augmentation moved pixels.
        assert!(checked >= 4 * 24, "{name}: only {checked} boxes checked");
        if name == "none" {
            assert_eq!(changed, 0);
        } else {
            assert!(changed >= 6, "{name}: only {changed} of 72 outputs changed");
        }
    }
}
