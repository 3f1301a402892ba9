//! Every rule against a generated dataset with that defect injected, and a clean dataset.

use std::collections::BTreeSet;
use std::path::Path;

use fusekit_dataset::{Dataset, DecodeLevel};
use fusekit_lint::{Code, Finding, LintOptions, LintRun, Subject, apply_fixes, lint};
use fusekit_synth::{Defect, SynthOptions, generate};

fn synth(dir: &Path, inject: Vec<Defect>) -> std::path::PathBuf {
    synth_sized(dir, inject, (96, 80))
}

fn synth_sized(dir: &Path, inject: Vec<Defect>, (width, height): (u32, u32)) -> std::path::PathBuf {
    let options = SynthOptions {
        pairs: 40,
        width,
        height,
        scenes: 4,
        inject,
        ..SynthOptions::default()
    };
    generate(dir, &options, &|| {}).unwrap().data_yaml
}

fn run(yaml: &Path, decode: DecodeLevel) -> LintRun {
    let dataset = Dataset::open(yaml, None).unwrap();
    lint(
        &dataset,
        &LintOptions {
            decode,
            ..LintOptions::default()
        },
        &|| {},
    )
}

fn codes(run: &LintRun) -> BTreeSet<Code> {
    run.report.findings.iter().map(|f| f.code).collect()
}

#[test]
fn clean_dataset_has_no_findings_in_either_mode() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = synth(dir.path(), Vec::new());
    for decode in [DecodeLevel::Header, DecodeLevel::Full] {
        let run = run(&yaml, decode);
        assert_eq!(run.report.findings, vec![], "{decode:?}");
        assert_eq!(run.report.summary.pairs, 40);
        assert!(run.fixes.is_empty());
    }
}

/// Where a finding points: its code, the file it is about (none for the dataset as a whole) and
/// the 1-based line in that file where it has one.
type Location = (Code, Option<String>, Option<usize>);

fn location(finding: &Finding) -> Location {
    let file = match finding.subject {
        Subject::Rgb => finding.rgb.clone(),
        Subject::Ir => finding.ir.clone(),
        Subject::Label => finding.label.clone(),
        Subject::Dataset => None,
    };
    (finding.code, file, finding.line)
}

fn locations(run: &LintRun) -> Vec<Location> {
    let mut all: Vec<Location> = run.report.findings.iter().map(location).collect();
    all.sort();
    all
}

/// Where lint must report the defect injected into pair `stem` of the dataset in `root`. Rows
/// are appended to a label file, so a row finding is on its last line.
fn expected_locations(defect: Defect, stem: &str, root: &Path) -> Vec<Location> {
    let code = Code::parse(defect.code()).unwrap();
    let at = |file: String, line: Option<usize>| vec![(code, Some(file), line)];
    let rgb = format!("images/{stem}.jpg");
    let label = format!("labels/{stem}.txt");
    let last_line = || {
        let text = std::fs::read_to_string(root.join(&label)).unwrap();
        Some(text.lines().count())
    };
    match defect {
        Defect::Pair001
        | Defect::Pair003
        | Defect::Pair006
        | Defect::Img001
        | Defect::Img002
        | Defect::Img004
        | Defect::Img005
        | Defect::Img006 => at(rgb, None),
        Defect::Pair007 | Defect::Pair008 => at(format!("imagesIR/{stem}.jpg"), None),
        Defect::Pair002 => at(format!("imagesIR/ir_only_{stem}.jpg"), None),
        Defect::Pair004 => at(format!("imagesIR/{stem}.png"), None),
        Defect::Pair005 => at(format!("imagesIR/{stem}.jpg"), None),
        Defect::Img003 => [rgb, format!("imagesIR/{stem}.jpg")]
            .into_iter()
            .map(|file| (code, Some(file), None))
            .collect(),
        Defect::Img007 => at(format!("images/{stem}_copy.jpg"), None),
        Defect::Lbl001 | Defect::Lbl002 | Defect::Lbl013 => at(label, None),
        Defect::Lbl003
        | Defect::Lbl004
        | Defect::Lbl005
        | Defect::Lbl006
        | Defect::Lbl007
        | Defect::Lbl008
        | Defect::Lbl009
        | Defect::Lbl011
        | Defect::Lbl012 => {
            let line = last_line();
            at(label, line)
        }
        Defect::Lbl010 => at(format!("labels/label_only_{stem}.txt"), None),
        Defect::Ds002 | Defect::Ds003 => vec![(code, None, None)],
        // The image a split list names that does not exist, at the list's line.
        Defect::Ds004 => at(format!("images/missing_{stem}.jpg"), Some(1)),
    }
}

#[test]
fn every_injected_defect_is_found_at_its_pair_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    // Large enough for the RGB-IR shift to be measured (PAIR007; at least 96 px a side).
    let yaml = synth_sized(dir.path(), Defect::ALL.to_vec(), (640, 512));
    let options = SynthOptions {
        pairs: 40,
        scenes: 4,
        ..SynthOptions::default()
    };
    let header = run(&yaml, DecodeLevel::Header);
    let full = run(&yaml, DecodeLevel::Full);
    // Exactly the injected findings, each at its file and line: a finding of an expected code
    // at another pair, file or line, or a second finding, fails as much as a missing one.
    let mut expected_full = Vec::new();
    let mut expected_header = Vec::new();
    for (index, &defect) in Defect::ALL.iter().enumerate() {
        let stem = fusekit_synth::pair_stem(&options, index);
        let expected = expected_locations(defect, &stem, dir.path());
        if !defect.needs_full_decode() {
            expected_header.extend(expected.iter().cloned());
        }
        expected_full.extend(expected);
    }
    expected_header.sort();
    expected_full.sort();
    assert_eq!(
        locations(&header),
        expected_header,
        "{}",
        header.report.to_human("", 0)
    );
    assert_eq!(
        locations(&full),
        expected_full,
        "{}",
        full.report.to_human("", 0)
    );
    // Pairs with an error-level finding are marked unusable; warnings and infos keep a pair.
    let usable = |stem: &str| {
        header
            .pairs
            .iter()
            .find(|p| p.rgb.ends_with(format!("{stem}.jpg")))
            .unwrap()
            .usable
    };
    let stem_of = |defect: Defect| {
        fusekit_synth::pair_stem(
            &options,
            Defect::ALL.iter().position(|d| *d == defect).unwrap(),
        )
    };
    assert!(!usable(&stem_of(Defect::Pair001)));
    assert!(!usable(&stem_of(Defect::Lbl003)));
    assert!(!usable(&stem_of(Defect::Lbl013)));
    assert!(usable(&stem_of(Defect::Lbl009)));
    assert!(usable(&stem_of(Defect::Lbl001)));
    assert!(header.pairs.iter().filter(|p| !p.usable).count() >= 12);
}

#[test]
fn fixes_are_safe_backed_up_and_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let yaml = synth(
        &data,
        vec![
            Defect::Lbl007,
            Defect::Lbl009,
            Defect::Lbl012,
            Defect::Lbl003,
        ],
    );
    let images_before = std::fs::read(data.join("images/010001.jpg")).unwrap();
    let first = run(&yaml, DecodeLevel::Header);
    assert_eq!(first.fixes.len(), 3);
    let backups = dir.path().join("backup");
    let written = apply_fixes(&first.fixes, &data, &backups).unwrap();
    assert_eq!(written.len(), 3);
    for backup in &written {
        let relative = backup.strip_prefix(&backups).unwrap();
        assert_ne!(
            std::fs::read(backup).unwrap(),
            std::fs::read(data.join(relative)).unwrap()
        );
    }
    let second = run(&yaml, DecodeLevel::Header);
    assert!(second.fixes.is_empty());
    let left = codes(&second);
    assert!(
        !left.contains(&Code::LBL007)
            && !left.contains(&Code::LBL009)
            && !left.contains(&Code::LBL012)
    );
    // The unfixable row stays, byte for byte.
    assert!(left.contains(&Code::LBL003));
    let lbl003 = fusekit_synth::pair_stem(
        &SynthOptions {
            pairs: 40,
            scenes: 4,
            ..SynthOptions::default()
        },
        3,
    );
    let text = std::fs::read_to_string(data.join(format!("labels/{lbl003}.txt"))).unwrap();
    assert!(text.ends_with("0 0.5 0.5 0.1\n"), "{text}");
    assert_eq!(
        std::fs::read(data.join("images/010001.jpg")).unwrap(),
        images_before
    );
}

#[test]
fn a_re_encoded_copy_is_found_by_full_decode() {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for sub in ["images", "imagesIR", "labels"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let picture = image::RgbImage::from_fn(64, 48, |x, y| {
        image::Rgb([(x * 3) as u8, (y * 5) as u8, 40])
    });
    for (path, compression) in [
        ("images/a.png", CompressionType::Fast),
        ("imagesIR/a.png", CompressionType::Best),
    ] {
        let file = std::fs::File::create(root.join(path)).unwrap();
        picture
            .write_with_encoder(PngEncoder::new_with_quality(
                file,
                compression,
                FilterType::Adaptive,
            ))
            .unwrap();
    }
    std::fs::write(root.join("labels/a.txt"), "0 0.5 0.5 0.2 0.2\n").unwrap();
    assert_ne!(
        std::fs::read(root.join("images/a.png")).unwrap(),
        std::fs::read(root.join("imagesIR/a.png")).unwrap()
    );
    let dataset = Dataset::open(root, Some(vec!["person".into()])).unwrap();
    let header = lint(&dataset, &LintOptions::default(), &|| {});
    assert!(!codes(&header).contains(&Code::PAIR006));
    let full = lint(
        &dataset,
        &LintOptions {
            decode: DecodeLevel::Full,
            ..LintOptions::default()
        },
        &|| {},
    );
    assert_eq!(codes(&full), BTreeSet::from([Code::PAIR006]));
}
