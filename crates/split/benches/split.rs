//! `cargo bench -p fusekit-split --bench split`: time to split N synthetic pair records (paths
//! and labels only, no pixels) for N = 10k, 100k, 1M, grouping by an LLVIP-style scene regex
//! and stratifying by class. Prints a Markdown table and the per-pair slope.

use std::time::{Duration, Instant};

use fusekit_split::{GroupBy, SplitParams, SplitRecord, Stratify, assign};

fn main() {
    let sizes = [10_000usize, 100_000, 1_000_000];
    let group_by = GroupBy::Stem(regex::Regex::new(r"^(\d{4})").expect("a valid regex"));
    let params = SplitParams {
        val: 0.2,
        test: 0.1,
        seed: 0,
        stratify: Stratify::Classes,
        near_dup_bits: None,
        dedupe_near: false,
    };
    println!("| pairs | split time | per pair |");
    println!("| --- | --- | --- |");
    let mut points = Vec::new();
    for &n in &sizes {
        let inputs: Vec<(String, Vec<(u32, u32)>)> = (0..n)
            .map(|i| {
                let boxes = if i % 9 == 0 {
                    vec![]
                } else {
                    vec![((i % 5) as u32, 1 + (i % 4) as u32)]
                };
                (format!("images/{:04}{:05}.jpg", i / 500, i % 500), boxes)
            })
            .collect();
        let time = best(|| {
            let records: Vec<SplitRecord> = inputs
                .iter()
                .enumerate()
                .map(|(i, (path, boxes))| SplitRecord {
                    path: path.clone(),
                    group: group_by.key(path).0,
                    boxes: boxes.clone(),
                    content: Some((i as u64, (i + n) as u64)),
                    ir_hash: None,
                })
                .collect();
            let result = assign(&records, &params);
            assert_eq!(result.sides.len(), n);
        });
        println!(
            "| {n} | {:.3} s | {:.2} us |",
            time.as_secs_f64(),
            time.as_secs_f64() * 1e6 / n as f64
        );
        points.push((n as f64, time.as_secs_f64()));
    }
    // Least-squares slope of time against pairs, and how far each size is from linear.
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / points.len() as f64;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let slope = points
        .iter()
        .map(|p| (p.0 - mean_x) * (p.1 - mean_y))
        .sum::<f64>()
        / points.iter().map(|p| (p.0 - mean_x).powi(2)).sum::<f64>();
    println!(
        "\nslope: {:.2} us per pair; 100k pairs in {:.3} s (goal < 2 s)",
        slope * 1e6,
        points[1].1
    );
}

fn best(mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .expect("three runs")
}
