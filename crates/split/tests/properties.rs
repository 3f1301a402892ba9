//! Properties of `assign`: determinism, group integrity, no leaks, ratio bounds, stability.

use std::collections::{BTreeMap, HashMap};

use fusekit_split::{Side, SplitParams, SplitRecord, Stratify, assign};
use proptest::prelude::*;

fn params(val: f64, stratify: Stratify) -> SplitParams {
    SplitParams {
        val,
        test: 0.1,
        seed: 7,
        stratify,
        near_dup_bits: Some(3),
        dedupe_near: false,
    }
}

prop_compose! {
    fn record(groups: u32)(
        index in 0u32..100_000,
        group in 0..groups,
        boxes in prop::collection::vec((0u32..3, 0u32..4), 0..3),
        content in prop::option::of((0u64..400, 0u64..400)),
        ir_hash in prop::option::of(any::<u64>()),
    ) -> SplitRecord {
        let mut boxes: BTreeMap<u32, u32> = boxes.into_iter().collect();
        boxes.retain(|_, n| *n > 0);
        SplitRecord {
            path: format!("images/{index:06}.jpg"),
            group: format!("g{group}"),
            boxes: boxes.into_iter().collect(),
            // Small pools make byte-identical files across groups likely.
            content: content.map(|(a, b)| (a, 1_000 + b)),
            ir_hash,
        }
    }
}

fn records() -> impl Strategy<Value = Vec<SplitRecord>> {
    prop::collection::vec(record(40), 1..250).prop_map(|mut v| {
        v.sort_by(|a, b| a.path.cmp(&b.path));
        v.dedup_by(|a, b| a.path == b.path);
        v
    })
}

fn sides_by_path(records: &[SplitRecord], sides: &[Side]) -> HashMap<String, Side> {
    records
        .iter()
        .zip(sides)
        .map(|(r, s)| (r.path.clone(), *s))
        .collect()
}

proptest! {
    #[test]
    fn deterministic_and_independent_of_input_order(records in records(), seed in 0u64..4) {
        let p = SplitParams { seed, ..params(0.2, Stratify::Classes) };
        let first = assign(&records, &p);
        prop_assert_eq!(&first, &assign(&records, &p));
        let mut reversed = records.clone();
        reversed.reverse();
        let second = assign(&reversed, &p);
        prop_assert_eq!(sides_by_path(&records, &first.sides), sides_by_path(&reversed, &second.sides));
        prop_assert_eq!(first.stats, second.stats);
    }

    #[test]
    fn groups_and_identical_files_never_straddle_sides(records in records()) {
        let result = assign(&records, &params(0.3, Stratify::Classes));
        let mut side_of: HashMap<String, Side> = HashMap::new();
        let mut side_of_file: HashMap<u64, Side> = HashMap::new();
        for (record, side) in records.iter().zip(&result.sides) {
            prop_assert_eq!(*side_of.entry(record.group.clone()).or_insert(*side), *side);
            if let Some((rgb, ir)) = record.content {
                prop_assert_eq!(*side_of_file.entry(rgb).or_insert(*side), *side);
                prop_assert_eq!(*side_of_file.entry(ir).or_insert(*side), *side);
            }
        }
        for near in &result.near_duplicates {
            let bits = (records[near.a].ir_hash.unwrap() ^ records[near.b].ir_hash.unwrap()).count_ones();
            prop_assert!(bits <= 3);
            prop_assert_eq!(near.across, result.sides[near.a] != result.sides[near.b]);
        }
    }

    #[test]
    fn near_duplicates_stay_together_when_asked(records in records()) {
        let p = SplitParams { dedupe_near: true, near_dup_bits: Some(64), ..params(0.3, Stratify::None) };
        let result = assign(&records, &p);
        // With a 64-bit threshold every hashed pair is a near-duplicate of every other one.
        let hashed: Vec<Side> = records.iter().zip(&result.sides).filter(|(r, _)| r.ir_hash.is_some()).map(|(_, s)| *s).collect();
        if records.len() <= 512 {
            prop_assert!(hashed.windows(2).all(|w| w[0] == w[1]));
        }
    }

    #[test]
    fn shares_are_within_half_the_largest_group(
        sizes in prop::collection::vec(1u32..6, 20..400),
        val in 0.05f64..0.5,
    ) {
        let records: Vec<SplitRecord> = sizes
            .iter()
            .enumerate()
            .flat_map(|(g, &size)| (0..size).map(move |k| SplitRecord {
                path: format!("images/{g:05}_{k}.jpg"),
                group: format!("g{g}"),
                boxes: vec![],
                content: None,
                ir_hash: None,
            }))
            .collect();
        let p = SplitParams { val, test: 0.0, seed: 1, stratify: Stratify::None, near_dup_bits: None, dedupe_near: false };
        let result = assign(&records, &p);
        let total = records.len() as f64;
        let largest = f64::from(*sizes.iter().max().unwrap());
        let achieved = result.stats.pairs[1] as f64;
        prop_assert!((achieved - val * total).abs() <= largest / 2.0 + 1e-9, "{achieved} vs {}", val * total);
    }
}

/// A grown dataset keeps its split: adding 10% new pairs moves at most as many existing pairs
/// as were added (in practice far fewer: only groups next to a cut move).
#[test]
fn growing_by_ten_percent_moves_few_existing_pairs() {
    for seed in 0..5u64 {
        let make = |range: std::ops::Range<u32>| -> Vec<SplitRecord> {
            range
                .map(|i| SplitRecord {
                    path: format!("images/{i:06}.jpg"),
                    group: format!("scene{}", i / 3),
                    boxes: vec![(i % 3, 1 + i % 4)],
                    content: Some((u64::from(i), 1_000_000 + u64::from(i))),
                    ir_hash: None,
                })
                .collect()
        };
        let base = make(0..3000);
        let mut grown = base.clone();
        grown.extend(make(3000..3300));
        let p = SplitParams {
            seed,
            ..params(0.2, Stratify::Classes)
        };
        let before = sides_by_path(&base, &assign(&base, &p).sides);
        let after = sides_by_path(&grown, &assign(&grown, &p).sides);
        let moved = before
            .iter()
            .filter(|(path, side)| after[*path] != **side)
            .count();
        assert!(
            moved <= 300,
            "seed {seed}: {moved} existing pairs moved for 300 added"
        );
        eprintln!("seed {seed}: {moved} of 3000 existing pairs moved for 300 added");
    }
}

#[test]
fn stratified_classes_land_near_the_asked_share() {
    let records: Vec<SplitRecord> = (0..4000u32)
        .map(|i| SplitRecord {
            path: format!("images/{i:06}.jpg"),
            group: format!("scene{}", i / 4),
            boxes: if i % 10 == 0 {
                vec![]
            } else {
                vec![(i % 7 % 3, 1 + i % 3)]
            },
            content: None,
            ir_hash: None,
        })
        .collect();
    let result = assign(&records, &params(0.2, Stratify::Classes));
    for (class, per_side) in &result.stats.boxes {
        let share = per_side[1] as f64 / per_side.iter().sum::<u64>() as f64;
        assert!(
            (share - 0.2).abs() < 0.03,
            "class {class}: val share {share}"
        );
    }
    let bg = result.stats.background;
    let bg_share = bg[1] as f64 / bg.iter().sum::<u64>() as f64;
    assert!(
        (bg_share - 0.2).abs() < 0.03,
        "background val share {bg_share}"
    );
}
