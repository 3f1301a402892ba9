//! A detector overfits four generated pairs, and `fusekit predict` then finds their boxes.

use std::path::Path;
use std::process::Command;

use fusekit_detect::{DetectionLoss, Detector, Fusion, ModelConfig, ModelScale, weights};
use image::{GrayImage, RgbImage};
use tch::nn::{self, OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

const SIZE: u32 = 64;
/// Adam steps that overfit the single pair of the source-size test.
const STEPS: usize = 100;

/// libtorch's random generator is global: tests that seed it and initialise a model hold this
/// from the seed to the initialisation, so that a model built by a test running alongside
/// draws nothing in between.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Boxes per image as (class, x0, y0, x1, y1) pixels: class 0 red squares, class 1 green
/// rectangles (4:3). One object per image: with several, which object a from-scratch model
/// learns first in a few hundred steps depends on the initialisation (Ultralytics behaves
/// the same way), and this test is about the pipeline, not about that race.
/// Saves an untrained yolov8n of `fusion` (one class, one IR plane) to `path`.
fn save_untrained(fusion: Fusion, path: &Path) {
    let vs = VarStore::new(Device::Cpu);
    let config = ModelConfig {
        scale: ModelScale::N,
        fusion,
        names: vec!["person".into()],
        ir_channels: 1,
    };
    let rng = torch_rng();
    let _ = Detector::new(&vs.root(), config.clone());
    drop(rng);
    weights::save(&vs, &config, path).unwrap();
}

fn scenes() -> [Vec<(u32, [u32; 4])>; 4] {
    [
        vec![(0, [8, 8, 36, 36])],
        vec![(1, [24, 20, 56, 44])],
        vec![(0, [30, 26, 58, 54])],
        vec![(1, [8, 6, 40, 30])],
    ]
}

/// Writes the pairs (RGB bright boxes on dark, IR the same shapes in grey) and returns the
/// input tensor `[4, 4, 64, 64]` and targets `[n, 6]` for training.
fn write_pairs(root: &Path) -> (Tensor, Tensor) {
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("imagesIR")).unwrap();
    let mut planes = Vec::new();
    let mut targets = Vec::new();
    for (i, boxes) in scenes().iter().enumerate() {
        let mut rgb = RgbImage::from_pixel(SIZE, SIZE, image::Rgb([20, 30, 40]));
        let mut ir = GrayImage::from_pixel(SIZE, SIZE, image::Luma([10]));
        for &(class, [x0, y0, x1, y1]) in boxes {
            let colour = if class == 0 {
                [230, 60, 60]
            } else {
                [60, 220, 90]
            };
            for y in y0..y1 {
                for x in x0..x1 {
                    rgb.put_pixel(x, y, image::Rgb(colour));
                    ir.put_pixel(x, y, image::Luma([200]));
                }
            }
            let s = SIZE as f32;
            targets.extend([
                i as f32,
                class as f32,
                (x0 + x1) as f32 / 2.0 / s,
                (y0 + y1) as f32 / 2.0 / s,
                (x1 - x0) as f32 / s,
                (y1 - y0) as f32 / s,
            ]);
        }
        rgb.save(root.join(format!("images/p{i}.png"))).unwrap();
        ir.save(root.join(format!("imagesIR/p{i}.png"))).unwrap();
        for c in 0..3 {
            planes.extend(rgb.pixels().map(|p| p.0[c]));
        }
        planes.extend(ir.pixels().map(|p| p.0[0]));
    }
    let images = Tensor::from_slice(&planes)
        .view([4, 4, SIZE as i64, SIZE as i64])
        .to_kind(Kind::Float)
        / 255.0;
    let n = targets.len() as i64 / 6;
    (images, Tensor::from_slice(&targets).view([n, 6]))
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

#[test]
fn overfit_four_pairs_then_predict_finds_their_boxes() {
    // One libtorch thread: tests share few cores, and OpenMP threads waiting for a time
    // slice make every operation slow.
    tch::set_num_threads(1);
    let rng = torch_rng();
    tch::manual_seed(0);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (images, targets) = write_pairs(&data);

    let vs = VarStore::new(Device::Cpu);
    let config = ModelConfig {
        scale: ModelScale::N,
        fusion: Fusion::Mid,
        names: vec!["square".into(), "bar".into()],
        ir_channels: 1,
    };
    let model = Detector::new(&vs.root(), config.clone());
    drop(rng);
    let mut optimizer = nn::Adam::default().build(&vs, 1e-3).unwrap();
    let loss = DetectionLoss::default();
    let mut last = [f64::NAN; 3];
    for _ in 0..250 {
        let outputs = model.forward_t(&images, true);
        let step = loss.compute(&outputs, &targets).unwrap();
        optimizer.zero_grad();
        step.total.backward();
        optimizer.step();
        last = step.parts;
    }
    assert!(last[0] < 0.5, "box loss after overfitting: {last:?}");
    let path = dir.path().join("overfit.safetensors");
    weights::save(&vs, &config, &path).unwrap();

    let out = dir.path().join("predict");
    let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(["predict", "--weights"])
        .arg(&path)
        .env("OMP_NUM_THREADS", "1")
        .arg("--source")
        .arg(&data)
        .args([
            "--imgsz", "64", "--device", "cpu", "--format", "json", "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 4);
    let jsonl = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 4);
    for record in &records {
        let rgb = record["rgb"].as_str().unwrap();
        let i: usize = rgb[rgb.len() - 5..rgb.len() - 4].parse().unwrap();
        let detections = detections_of(record);
        for &(class, b) in &scenes()[i] {
            let truth = b.map(f64::from);
            let found = detections
                .iter()
                .any(|&(c, _, bbox)| c == u64::from(class) && iou(bbox, truth) > 0.5);
            assert!(
                found,
                "pair {i}: no detection of class {class} at {b:?} in {detections:?}"
            );
        }
        assert!(detections.len() <= scenes()[i].len() + 2, "{detections:?}");
    }
    let pictures = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "png")
        })
        .count();
    assert_eq!(pictures, 4, "a PNG picture per PNG source");
}

/// A source unlike the network input (200 x 120 predicted at 64, so stored as 64 x 39 and
/// padded above and below): trained on exactly the batch the loader makes of it, `predict`
/// reports the object in source pixels, not network pixels.
#[test]
fn predict_reports_boxes_in_source_pixels_for_a_source_unlike_imgsz() {
    use fusekit_cache::{BuildInput, BuildOptions, Cache, IrChannels, MapMode, build};
    use fusekit_loader::{Loader, LoaderOptions};
    tch::set_num_threads(1);
    let rng = torch_rng();
    tch::manual_seed(0);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for sub in ["images", "imagesIR", "labels"] {
        std::fs::create_dir_all(data.join(sub)).unwrap();
    }
    let (width, height) = (200u32, 120u32);
    // Off-centre on both axes: a network-pixel box, or a padding left in, lands elsewhere.
    let truth = [96u32, 10, 184, 70];
    let inside = |x: u32, y: u32| x >= truth[0] && x < truth[2] && y >= truth[1] && y < truth[3];
    let rgb = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb(if inside(x, y) {
            [60, 220, 90]
        } else {
            [20, 30, 40]
        })
    });
    let ir = GrayImage::from_fn(width, height, |x, y| {
        image::Luma([if inside(x, y) { 200 } else { 10 }])
    });
    let input = BuildInput {
        name: "images/wide.png".into(),
        rgb: data.join("images/wide.png"),
        ir: data.join("imagesIR/wide.png"),
        label: Some(data.join("labels/wide.txt")),
    };
    rgb.save(&input.rgb).unwrap();
    ir.save(&input.ir).unwrap();
    let [x0, y0, x1, y1] = truth.map(f64::from);
    let (w, h) = (f64::from(width), f64::from(height));
    std::fs::write(
        input.label.as_ref().unwrap(),
        format!(
            "0 {} {} {} {}\n",
            (x0 + x1) / 2.0 / w,
            (y0 + y1) / 2.0 / h,
            (x1 - x0) / w,
            (y1 - y0) / h
        ),
    )
    .unwrap();

    // The training batch as the trainer gets it: cached at 64, letterboxed by the loader.
    let cache_path = dir.path().join("train.fkc");
    let options = BuildOptions {
        imgsz: SIZE,
        mode: MapMode::Disk,
        ir_channels: IrChannels::Grey,
        names: vec!["bar".into()],
        ..BuildOptions::default()
    };
    build(&cache_path, std::slice::from_ref(&input), &options, &|| {}).unwrap();
    let loader = Loader::new(
        std::sync::Arc::new(Cache::open(&cache_path, None).unwrap()),
        LoaderOptions {
            batch: 1,
            shuffle: false,
            ..LoaderOptions::default()
        },
    );
    let batch = loader.make_batch(&[0], 0).unwrap();
    let images = Tensor::from_slice(&batch.images)
        .view([1, 4, i64::from(SIZE), i64::from(SIZE)])
        .to_kind(Kind::Float)
        / 255.0;
    let rows: Vec<f32> = batch
        .boxes
        .iter()
        .flat_map(|b| [b.image as f32, b.class as f32, b.x, b.y, b.w, b.h])
        .collect();
    let targets = Tensor::from_slice(&rows).view([batch.boxes.len() as i64, 6]);

    let vs = VarStore::new(Device::Cpu);
    let config = ModelConfig {
        scale: ModelScale::N,
        fusion: Fusion::Early,
        names: vec!["bar".into()],
        ir_channels: 1,
    };
    let model = Detector::new(&vs.root(), config.clone());
    drop(rng);
    let mut optimizer = nn::Adam::default().build(&vs, 2e-3).unwrap();
    let loss = DetectionLoss::default();
    for _ in 0..STEPS {
        // Batch norm in inference mode, as predict runs it: with one image and few steps its
        // running statistics (momentum 0.03) would still be far from the batch's.
        let outputs = model.forward_t(&images, false);
        let step = loss.compute(&outputs, &targets).unwrap();
        optimizer.zero_grad();
        step.total.backward();
        optimizer.step();
    }
    let weights_path = dir.path().join("wide.safetensors");
    weights::save(&vs, &config, &weights_path).unwrap();

    let out = dir.path().join("predict");
    let predict = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_fusekit"))
            .args(["predict", "--weights"])
            .arg(&weights_path)
            .arg(&input.rgb)
            .arg(&input.ir)
            .env("OMP_NUM_THREADS", "1")
            .args(["--imgsz", "64", "--device", "cpu", "--format", "json"])
            .args(["--save-txt", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let output = predict(&["--save-conf", "--save-json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record: serde_json::Value =
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
    assert_eq!(
        (record["width"].as_u64(), record["height"].as_u64()),
        (Some(200), Some(120))
    );
    let detections = detections_of(&record);
    for (_, _, b) in &detections {
        assert!(
            b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= w && b[3] <= h && b[0] < b[2] && b[1] < b[3],
            "box {b:?} is not inside the 200 x 120 source"
        );
    }
    // The most confident detection is the object, where it was painted.
    let (_, _, top) = detections
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or_else(|| panic!("no detection: {record}"));
    let truth = [x0, y0, x1, y1];
    assert!(
        iou(*top, truth) > 0.7,
        "the top detection {top:?} is not at {truth:?} (IoU {:.2}): {detections:?}",
        iou(*top, truth)
    );
    assert_saved_outputs(&out, &input.rgb, &record);
    // Predicted again into the same folder with nothing above the threshold: no label file,
    // not even the earlier one.
    assert!(predict(&["--conf", "1"]).status.success());
    assert!(!out.join("labels/wide.txt").exists());
}

/// A JSON array of numbers.
fn numbers(array: &serde_json::Value) -> Vec<f64> {
    array
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The class, score and corners of each detection of a predictions.jsonl record.
fn detections_of(record: &serde_json::Value) -> Vec<(u64, f64, [f64; 4])> {
    record["detections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let b = numbers(&d["box"]);
            (
                d["class"].as_u64().unwrap(),
                d["score"].as_f64().unwrap(),
                [b[0], b[1], b[2], b[3]],
            )
        })
        .collect()
}

/// What `predict --save-txt --save-conf --save-json` wrote into `out` for the single pair of
/// `record` (RGB image `rgb`): a picture of the source's size (RGB and IR side by side) with
/// every detection outlined on both halves in its class colour and nothing changed away from
/// the boxes, YOLO rows and COCO detections that say what the record says.
fn assert_saved_outputs(out: &Path, rgb: &Path, record: &serde_json::Value) {
    let detections = detections_of(record);
    assert!(!detections.is_empty(), "{record}");
    let source = image::open(rgb).unwrap().into_rgb8();
    let (width, height) = source.dimensions();
    let stem = rgb.file_stem().unwrap().to_str().unwrap();

    let picture = image::open(out.join(format!("00000_{stem}.png")))
        .unwrap()
        .into_rgb8();
    let gap = fusekit_plots::PAIR_GAP;
    assert_eq!(picture.dimensions(), (2 * width + gap, height));
    for &(class, _, b) in &detections {
        let x0 = (b[0].max(0.0) as u32).min(width - 1);
        let y = ((b[1] + b[3]) / 2.0) as u32;
        for half in [0, width + gap] {
            assert_eq!(
                picture.get_pixel(half + x0, y).0,
                fusekit_plots::class_rgb(class as u32),
                "the left edge of class {class} box {b:?} at ({}, {y})",
                half + x0
            );
        }
    }
    // Away from every box and its label, the RGB half is the source itself.
    let far = |&(x, y): &(u32, u32)| {
        detections.iter().all(|&(_, _, b)| {
            let (x, y) = (f64::from(x), f64::from(y));
            x < b[0] - 100.0 || x > b[2] + 100.0 || y < b[1] - 30.0 || y > b[3] + 4.0
        })
    };
    let far: Vec<(u32, u32)> = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .filter(far)
        .collect();
    assert!(
        far.len() > 1000,
        "{} pixels far from {detections:?}",
        far.len()
    );
    assert!(
        far.iter()
            .all(|&(x, y)| picture.get_pixel(x, y) == source.get_pixel(x, y)),
        "pixels far from every box were changed"
    );

    let rows = std::fs::read_to_string(out.join(format!("labels/{stem}.txt"))).unwrap();
    let rows: Vec<Vec<f64>> = rows
        .lines()
        .map(|l| l.split(' ').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), detections.len());
    let (w, h) = (f64::from(width), f64::from(height));
    for (row, &(class, score, b)) in rows.iter().zip(&detections) {
        let expected = [
            class as f64,
            (b[0] + b[2]) / 2.0 / w,
            (b[1] + b[3]) / 2.0 / h,
            (b[2] - b[0]) / w,
            (b[3] - b[1]) / h,
            score,
        ];
        assert_eq!(row.len(), 6, "{row:?}");
        for (got, want) in row.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "row {row:?} vs {expected:?}");
        }
    }

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("predictions.json")).unwrap())
            .unwrap();
    let entries = json.as_array().unwrap();
    assert_eq!(entries.len(), detections.len());
    for (entry, &(class, score, b)) in entries.iter().zip(&detections) {
        assert_eq!(entry["image_id"], stem);
        assert_eq!(entry["category_id"].as_u64(), Some(class));
        assert!((entry["score"].as_f64().unwrap() - score).abs() < 1e-6);
        let bbox = numbers(&entry["bbox"]);
        let expected = [b[0], b[1], b[2] - b[0], b[3] - b[1]];
        for (got, want) in bbox.iter().zip(expected) {
            assert!((got - want).abs() < 1e-3, "bbox {bbox:?} vs {expected:?}");
        }
    }
}

#[test]
fn predict_reports_bad_weights_and_missing_images() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"nope").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(["predict", "--weights"])
        .arg(&bad)
        .args(["a.png", "b.png", "--device", "cpu"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.safetensors"), "{stderr}");

    let good = dir.path().join("w.safetensors");
    save_untrained(Fusion::Rgb, &good);
    let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
        .args(["predict", "--weights"])
        .arg(&good)
        .args(["missing.png", "b.png", "--device", "cpu"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.png"), "{stderr}");
}

/// `predict --ir-norm` maps 16-bit IR exactly as the cache builder does: a pair with 16-bit IR
/// predicted with `--ir-norm minmax` is fed to the network (and drawn in its picture) exactly
/// as the same pair whose IR was mapped to 8 bits beforehand by `normalise_ir`, and
/// `--ir-norm none` is not.
#[test]
fn predict_normalises_16_bit_ir_as_the_cache_does() {
    use fusekit_dataset::{IrNorm, normalise_ir};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let inside = |x: u32, y: u32| (16..40).contains(&x) && (20..44).contains(&y);
    RgbImage::from_fn(SIZE, SIZE, |x, y| {
        image::Rgb(if inside(x, y) {
            [90, 80, 70]
        } else {
            [20, 30, 40]
        })
    })
    .save(root.join("rgb.png"))
    .unwrap();
    // Raw counts: a warm square 600 counts above a background near 28,000.
    let counts = image::ImageBuffer::from_fn(SIZE, SIZE, |x, y| {
        image::Luma([if inside(x, y) {
            28_600
        } else {
            28_000 + (x + y) as u16
        }])
    });
    let counts = image::DynamicImage::ImageLuma16(counts);
    counts.save(root.join("ir16.png")).unwrap();
    normalise_ir(counts, IrNorm::MinMax)
        .save(root.join("ir8.png"))
        .unwrap();

    let path = root.join("w.safetensors");
    save_untrained(Fusion::Mid, &path);
    // The detections and the picture of the stored pair the network was given.
    let predict = |ir: &str, extra: &[&str]| {
        let out = root.join(format!("out-{ir}-{}", extra.join("-")));
        let output = Command::new(env!("CARGO_BIN_EXE_fusekit"))
            .args(["predict", "--weights"])
            .arg(&path)
            .args([
                "rgb.png", ir, "--imgsz", "64", "--device", "cpu", "--format", "json",
            ])
            .arg("--out")
            .arg(&out)
            .args(extra)
            .env("OMP_NUM_THREADS", "1")
            .current_dir(root)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let record: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let picture = std::fs::read(out.join("00000_rgb.png")).unwrap();
        (record["detections"].clone(), picture)
    };
    let mapped_first = predict("ir8.png", &[]);
    assert_eq!(predict("ir16.png", &["--ir-norm", "minmax"]), mapped_first);
    assert_ne!(
        predict("ir16.png", &["--ir-norm", "none"]).1,
        mapped_first.1
    );
}
