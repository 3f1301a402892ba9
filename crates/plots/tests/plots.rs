//! Every plot through the public interface, on synthetic inputs: the files decode, have their
//! sizes and show something; bad input is an error.

use std::collections::HashSet;
use std::path::Path;

use fusekit_eval::{ConfusionMatrix, Prediction, Truth, evaluate};
use fusekit_plots::{
    BatchView, CONFUSION_PNGS, CURVE_PNGS, Detected, LabelBox, PAIR_GAP, PlotError, ScheduleStep,
    class_rgb, confusion_matrix, curves, labels, line_width, paired_batch, paired_detections,
    results, schedule,
};
use image::RgbImage;

const HEADER: &str = "epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,\
metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,\
val/cls_loss,val/dfl_loss,lr/pg0,lr/pg1,lr/pg2";

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("class{i}")).collect()
}

fn decode(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8()
}

/// Asserts that `picture` is `size` and shows a drawing: many colours, and at least
/// `min_ink` of its pixels not white.
fn assert_drawn(path: &Path, size: (u32, u32), min_ink: f64) {
    let picture = decode(path);
    assert_eq!(picture.dimensions(), size, "{}", path.display());
    let colours: HashSet<[u8; 3]> = picture.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 50,
        "{}: {} colours",
        path.display(),
        colours.len()
    );
    let ink = picture.pixels().filter(|p| p.0 != [255; 3]).count();
    let share = ink as f64 / f64::from(size.0 * size.1);
    assert!(
        share > min_ink,
        "{}: {share} of the pixels drawn",
        path.display()
    );
}

/// A detector that finds class 0 well and class 1 half the time, over 20 images.
fn detections() -> (Vec<Prediction>, Vec<Truth>) {
    let mut predictions = Vec::new();
    let mut truths = Vec::new();
    for image in 0..20 {
        let a = [10.0, 10.0, 50.0, 60.0];
        let b = [100.0, 80.0, 160.0, 150.0];
        truths.push(Truth {
            image,
            class: 0,
            bbox: a,
        });
        truths.push(Truth {
            image,
            class: 1,
            bbox: b,
        });
        let score = 0.3 + 0.03 * image as f32;
        predictions.push(Prediction {
            image,
            class: 0,
            score,
            bbox: [11.0, 10.0, 50.0, 61.0],
        });
        if image % 2 == 0 {
            predictions.push(Prediction {
                image,
                class: 1,
                score: score - 0.2,
                bbox: b,
            });
        } else {
            predictions.push(Prediction {
                image,
                class: 0,
                score: 0.5,
                bbox: [200.0, 200.0, 230.0, 240.0],
            });
        }
    }
    (predictions, truths)
}

#[test]
fn results_png_from_results_csv() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("results.csv");
    let mut text = format!("{HEADER}\n");
    for epoch in 1..=6 {
        let e = f64::from(epoch);
        let loss = 3.0 / e;
        let map = 0.1 * e;
        text += &format!(
            "{epoch},{},{loss},{loss},{loss},{map},{map},{map},{map},{loss},{loss},{loss},0.01,0.01,0.01\n",
            10.0 * e
        );
    }
    std::fs::write(&csv, text).unwrap();
    let png = dir.path().join("results.png");
    results(&csv, &png).unwrap();
    assert_drawn(&png, (2400, 1200), 0.03);
    // Redrawn over an existing file (the trainer does so after each epoch).
    results(&csv, &png).unwrap();
    assert_drawn(&png, (2400, 1200), 0.03);
}

#[test]
fn results_with_one_epoch_and_a_nan() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("results.csv");
    std::fs::write(
        &csv,
        format!("{HEADER}\n1,5,NaN,1,1,0,0,0,0,1,1,1,0.1,0.1,0.1\n"),
    )
    .unwrap();
    let png = dir.path().join("results.png");
    results(&csv, &png).unwrap();
    assert_drawn(&png, (2400, 1200), 0.02);
}

#[test]
fn results_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("results.csv");
    let png = dir.path().join("results.png");
    std::fs::write(
        &csv,
        format!("{HEADER}\n1,5,x,1,1,0,0,0,0,1,1,1,0.1,0.1,0.1\n"),
    )
    .unwrap();
    let error = results(&csv, &png).unwrap_err();
    assert!(matches!(error, PlotError::Csv { line: 2, .. }), "{error}");
    assert!(error.to_string().contains("`x` is not a number"), "{error}");

    std::fs::write(&csv, "epoch,time\n1,2\n").unwrap();
    let error = results(&csv, &png).unwrap_err();
    assert!(
        error.to_string().contains("no `train/box_loss` column"),
        "{error}"
    );

    std::fs::write(&csv, format!("{HEADER}\n")).unwrap();
    assert!(matches!(results(&csv, &png), Err(PlotError::Input { .. })));

    let missing = dir.path().join("missing.csv");
    assert!(matches!(results(&missing, &png), Err(PlotError::Io { .. })));
    assert!(!png.exists(), "no picture after an error");
}

#[test]
fn four_curves_from_an_evaluation() {
    let (predictions, truths) = detections();
    let metrics = evaluate(&predictions, &truths, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let written = curves(&metrics.curves, &names(2), dir.path()).unwrap();
    assert_eq!(written.len(), 4);
    for (path, name) in written.iter().zip(CURVE_PNGS) {
        assert_eq!(path, &dir.path().join(name));
        assert_drawn(path, (1800, 1200), 0.02);
    }
}

#[test]
fn curves_reject_missing_names_and_ragged_curves() {
    let (predictions, truths) = detections();
    let metrics = evaluate(&predictions, &truths, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let error = curves(&metrics.curves, &names(1), dir.path()).unwrap_err();
    assert!(error.to_string().contains("class 1 has no name"), "{error}");
    let mut ragged = metrics.curves.clone();
    ragged.classes[0].f1.pop();
    assert!(matches!(
        curves(&ragged, &names(2), dir.path()),
        Err(PlotError::Input { .. })
    ));
}

#[test]
fn confusion_matrices_counted_and_normalised() {
    let (predictions, truths) = detections();
    let matrix = ConfusionMatrix::new(&predictions, &truths, 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let written = confusion_matrix(&matrix, &names(2), dir.path()).unwrap();
    for (path, name) in written.iter().zip(CONFUSION_PNGS) {
        assert_eq!(path, &dir.path().join(name));
        assert_drawn(path, (1600, 1300), 0.05);
    }
    let error = confusion_matrix(&matrix, &names(3), dir.path()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("3 names for a matrix of 2 classes"),
        "{error}"
    );
}

#[test]
fn labels_jpg_statistics() {
    let boxes: Vec<LabelBox> = (0..300)
        .map(|i| {
            let t = i as f32 / 300.0;
            LabelBox {
                image: 0,
                class: (i % 3) as u32,
                x: t,
                y: 1.0 - t * t,
                w: 0.05 + 0.3 * t,
                h: 0.1 + 0.2 * t,
                score: None,
            }
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labels.jpg");
    labels(&boxes, &names(3), &path).unwrap();
    assert_drawn(&path, (1600, 1600), 0.05);

    let bad = [LabelBox {
        class: 7,
        ..boxes[0]
    }];
    assert!(matches!(
        labels(&bad, &names(3), &path),
        Err(PlotError::Input { .. })
    ));
    let nan = [LabelBox {
        x: f32::NAN,
        ..boxes[0]
    }];
    assert!(matches!(
        labels(&nan, &names(3), &path),
        Err(PlotError::Input { .. })
    ));
}

/// Four 64 x 64 images (RGB gradient, grey IR), one box each at a different place.
fn synthetic_batch() -> (Vec<u8>, Vec<LabelBox>) {
    let s = 64;
    let mut pixels = Vec::new();
    for image in 0..4 {
        for plane in 0..4 {
            for i in 0..s * s {
                let (x, y) = (i % s, i / s);
                pixels.push(match plane {
                    0 => (x * 4) as u8,
                    1 => (y * 4) as u8,
                    2 => (image * 60) as u8,
                    _ => ((x + y) * 2) as u8,
                });
            }
        }
    }
    let boxes = (0..4)
        .map(|image| LabelBox {
            image,
            class: (image % 2) as u32,
            x: 0.3 + 0.1 * image as f32,
            y: 0.5,
            w: 0.3,
            h: 0.4,
            score: (image % 2 == 1).then_some(0.87),
        })
        .collect();
    (pixels, boxes)
}

#[test]
fn paired_batch_tiles_show_rgb_and_ir_with_the_same_boxes_and_scores() {
    let (pixels, boxes) = synthetic_batch();
    let batch = BatchView {
        imgsz: 64,
        planes: 4,
        images: &pixels,
        boxes: &boxes,
    };
    let dir = tempfile::tempdir().unwrap();
    let jpg = dir.path().join("train_batch0.jpg");
    paired_batch(&batch, &names(2), &jpg).unwrap();
    assert_eq!(
        decode(&jpg).dimensions(),
        (256, 128),
        "2 x 2 tiles of two 64-px squares"
    );

    // Lossless, to compare the halves exactly: box outline pixels of the RGB half reappear
    // at the same place in the IR half. Image 0's box spans rows 19..45; its class name sits
    // above it, on the RGB half only.
    let png = dir.path().join("train_batch0.png");
    paired_batch(&batch, &names(2), &png).unwrap();
    let picture = decode(&png);
    let class0 = [31u8, 119, 180];
    let mut outline = 0;
    for y in 19..64 {
        for x in 0..64 {
            if picture.get_pixel(x, y).0 == class0 {
                outline += 1;
                assert_eq!(
                    picture.get_pixel(x + 64, y).0,
                    class0,
                    "({x}, {y}) on the IR side"
                );
            }
        }
    }
    assert!(
        outline > 40,
        "the box of image 0 is drawn ({outline} pixels)"
    );
    // Class names sit above the boxes on the RGB half; a prediction's score makes its label
    // ("class1 0.87", image 1) wider than a ground-truth one ("class0", image 0).
    let label_pixels = |x0: u32, colour: [u8; 3]| {
        // Rows above the boxes' outlines (the box tops are at row 19, 2 pixels wide).
        (0..17)
            .flat_map(|y| (x0..x0 + 64).map(move |x| (x, y)))
            .filter(|&(x, y)| picture.get_pixel(x, y).0 == colour)
            .count()
    };
    let class1 = [255u8, 127, 14];
    let (truth_label, scored_label) = (label_pixels(0, class0), label_pixels(128, class1));
    assert!(truth_label > 50, "{truth_label}");
    assert!(
        scored_label > truth_label * 3 / 2,
        "{scored_label} vs {truth_label}"
    );
    assert_eq!(label_pixels(192, class1), 0, "labels stay off the IR half");
    // The IR half is grey where no box is drawn, the RGB half is not.
    assert_eq!(
        picture
            .get_pixel(64 + 60, 5)
            .0
            .iter()
            .collect::<HashSet<_>>()
            .len(),
        1
    );
    assert!(
        picture
            .get_pixel(60, 5)
            .0
            .iter()
            .collect::<HashSet<_>>()
            .len()
            > 1
    );
}

#[test]
fn paired_batch_rejects_bad_input() {
    let (pixels, boxes) = synthetic_batch();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train_batch0.jpg");
    let names = names(2);
    let three_planes = BatchView {
        imgsz: 64,
        planes: 3,
        images: &pixels,
        boxes: &boxes,
    };
    let error = paired_batch(&three_planes, &names, &path).unwrap_err();
    assert!(error.to_string().contains("3 planes"), "{error}");
    let torn = BatchView {
        imgsz: 64,
        planes: 4,
        images: &pixels[1..],
        boxes: &boxes,
    };
    assert!(matches!(
        paired_batch(&torn, &names, &path),
        Err(PlotError::Input { .. })
    ));
    let empty = BatchView {
        imgsz: 64,
        planes: 4,
        images: &[],
        boxes: &[],
    };
    assert!(matches!(
        paired_batch(&empty, &names, &path),
        Err(PlotError::Input { .. })
    ));
    let unnamed = [LabelBox {
        class: 5,
        ..boxes[0]
    }];
    let bad_class = BatchView {
        imgsz: 64,
        planes: 4,
        images: &pixels,
        boxes: &unnamed,
    };
    assert!(matches!(
        paired_batch(&bad_class, &names, &path),
        Err(PlotError::Input { .. })
    ));
    assert!(!path.exists());
}

/// Near-white pixels (every channel at least 200) in rows `rows` and columns `columns` of
/// `picture`.
fn count_white(
    picture: &RgbImage,
    rows: std::ops::Range<u32>,
    columns: std::ops::Range<u32>,
) -> usize {
    rows.flat_map(|y| columns.clone().map(move |x| (x, y)))
        .filter(|&(x, y)| picture.get_pixel(x, y).0.iter().all(|&c| c >= 200))
        .count()
}

#[test]
fn prediction_pictures_scale_lines_and_labels_with_the_image() {
    let dir = tempfile::tempdir().unwrap();
    // (image size, expected line width) per Ultralytics' max(round((W + H) / 2 * 0.003), 2).
    for ((w, h), line) in [
        ((200u32, 120u32), 2u32),
        ((1280, 1024), 3),
        ((3000, 2000), 8),
    ] {
        assert_eq!(line_width(w, h), line);
        let rgb = RgbImage::from_pixel(w, h, image::Rgb([40, 40, 40]));
        let ir = RgbImage::from_pixel(w, h, image::Rgb([90, 90, 90]));
        // A box in the lower half, with room for its label above it.
        let corners = [
            w as f32 * 0.25,
            h as f32 * 0.5,
            w as f32 * 0.75,
            h as f32 * 0.9,
        ];
        let detected = Detected {
            class: 1,
            corners,
            label: "car 0.91".into(),
        };
        let path = dir.path().join(format!("{w}.png"));
        paired_detections(&rgb, &ir, std::slice::from_ref(&detected), &path).unwrap();
        let picture = decode(&path);
        assert_eq!(picture.dimensions(), (2 * w + PAIR_GAP, h));
        let colour = class_rgb(1);
        let (x0, y_mid) = (corners[0] as u32, (corners[1] + corners[3]) as u32 / 2);
        for half in [0, w + PAIR_GAP] {
            // The left edge is `line` pixels of the class colour, then the image again.
            let row: Vec<[u8; 3]> = (0..=line)
                .map(|dx| picture.get_pixel(half + x0 + dx, y_mid).0)
                .collect();
            assert!(
                row[..line as usize].iter().all(|&p| p == colour),
                "{w}: {row:?}"
            );
            assert_ne!(row[line as usize], colour, "{w}: {row:?}");
            // The label: a band of the class colour above the box, its height growing with
            // the image (text at least 12 px, Ultralytics' (W + H) / 2 * 0.035 beyond).
            let band_rows = (0..corners[1] as u32)
                .filter(|&y| picture.get_pixel(half + x0 + 1, y).0 == colour)
                .count() as f64;
            let text = (f64::from(w + h) / 2.0 * 0.035).max(12.0);
            assert!(
                band_rows >= text * 0.8 && band_rows <= text * 2.0,
                "{w}: a label band of {band_rows} rows for {text} px text"
            );
            // White text on the band.
            let white = count_white(
                &picture,
                corners[1] as u32 - band_rows as u32..corners[1] as u32,
                half + x0..half + x0 + (text * 3.0) as u32,
            );
            assert!(white as f64 > text, "{w}: {white} white text pixels");
        }
    }
    let small = RgbImage::new(10, 10);
    let error = paired_detections(
        &RgbImage::new(12, 10),
        &small,
        &[],
        &dir.path().join("x.png"),
    )
    .unwrap_err();
    assert!(matches!(error, PlotError::Input { .. }), "{error}");
}

#[test]
fn schedule_plot_draws_every_batch_and_rejects_an_empty_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schedule.png");
    // Warmup over the first 30 of 60 batches, then a linear decay.
    let steps: Vec<ScheduleStep> = (0..60)
        .map(|b| {
            let warm = (f64::from(b) / 30.0).min(1.0);
            ScheduleStep {
                lr: [0.01 * warm, 0.01 * warm, 0.1 - 0.09 * warm],
                momentum: 0.8 + 0.137 * warm,
                accumulate: 1 + (3.0 * warm) as u32,
            }
        })
        .collect();
    schedule(&steps, ["weight", "bn", "bias"], 20, &path).unwrap();
    assert_drawn(&path, (1400, 1200), 0.02);
    let error = schedule(&[], ["weight", "bn", "bias"], 20, &path).unwrap_err();
    assert!(matches!(error, PlotError::Input { .. }), "{error}");
}
