//! Pairs whose RGB or IR files are byte-identical land on one side; files that share only
//! their first and last 64 KiB (all that header-mode lint hashes at first) are not joined.

use std::path::Path;

use fusekit_dataset::Dataset;
use fusekit_lint::{LintOptions, lint};
use fusekit_split::{GroupBy, SplitParams, Stratify, plan};
use image::RgbImage;

/// A 320x256 BMP (about 240 KiB): a gradient moved by `seed`, its middle row set to `middle`.
fn save_bmp(path: &Path, seed: u8, middle: u8) {
    RgbImage::from_fn(320, 256, |x, y| match y {
        128 => image::Rgb([middle; 3]),
        _ => image::Rgb([(x as u8).wrapping_add(seed), y as u8, seed]),
    })
    .save(path)
    .unwrap();
}

#[test]
fn only_byte_identical_files_join_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["images", "imagesIR", "labels"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    // b's RGB differs from a's in its middle row only; c's IR is a copy of a's.
    for (name, rgb, ir) in [
        ("a", (1, 0), (2, 0)),
        ("b", (1, 9), (3, 0)),
        ("c", (4, 0), (2, 0)),
    ] {
        save_bmp(&root.join(format!("images/{name}.bmp")), rgb.0, rgb.1);
        save_bmp(&root.join(format!("imagesIR/{name}.bmp")), ir.0, ir.1);
        std::fs::write(
            root.join(format!("labels/{name}.txt")),
            "0 0.5 0.5 0.2 0.2\n",
        )
        .unwrap();
    }
    let dataset = Dataset::open(root, Some(vec!["person".into()])).unwrap();
    let run = lint(&dataset, &LintOptions::default(), &|| {});
    let params = SplitParams {
        val: 0.5,
        test: 0.0,
        seed: 0,
        stratify: Stratify::None,
        near_dup_bits: None,
        dedupe_near: false,
    };
    let plan = plan(&dataset, &run, &GroupBy::Pair, &params, &|| {});
    assert_eq!(plan.assignment.content_joins, 1);
    assert_eq!(plan.assignment.components, 2);
    assert_eq!(plan.assignment.sides[0], plan.assignment.sides[2]);
}
