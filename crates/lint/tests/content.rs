//! Duplicate pairs (IMG007) and byte-identical RGB and IR files (PAIR006) stay exact while
//! header mode reads only the ends of big files; the bytes read are counted in the summary.

use std::collections::BTreeSet;
use std::path::Path;

use fusekit_dataset::{CONTENT_EDGE, Dataset, DecodeLevel};
use fusekit_lint::{Code, LintOptions, LintRun, lint};
use image::{DynamicImage, ImageFormat, RgbImage};

/// An uncompressed 320x256 BMP (about 240 KiB, so more than both ends): a gradient moved by
/// `seed`, with the middle row painted `middle` (the ends of the file stay the same).
fn bmp(seed: u8, middle: u8) -> Vec<u8> {
    bmp_of_size(320, 256, seed, middle)
}

fn bmp_of_size(width: u32, height: u32, seed: u8, middle: u8) -> Vec<u8> {
    let image = RgbImage::from_fn(width, height, |x, y| {
        if y == height / 2 {
            image::Rgb([middle; 3])
        } else {
            image::Rgb([(x as u8).wrapping_add(seed), y as u8, seed])
        }
    });
    let mut out = std::io::Cursor::new(Vec::new());
    DynamicImage::ImageRgb8(image)
        .write_to(&mut out, ImageFormat::Bmp)
        .unwrap();
    let bytes = out.into_inner();
    assert!(bytes.len() > 2 * CONTENT_EDGE);
    bytes
}

/// Writes `images/NAME.bmp`, `imagesIR/NAME.bmp` and a one-box label for each pair.
fn dataset(root: &Path, pairs: &[(&str, Vec<u8>, Vec<u8>)]) -> Dataset {
    for dir in ["images", "imagesIR", "labels"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (name, rgb, ir) in pairs {
        std::fs::write(root.join(format!("images/{name}.bmp")), rgb).unwrap();
        std::fs::write(root.join(format!("imagesIR/{name}.bmp")), ir).unwrap();
        std::fs::write(
            root.join(format!("labels/{name}.txt")),
            "0 0.5 0.5 0.2 0.2\n",
        )
        .unwrap();
    }
    Dataset::open(root, Some(vec!["person".into()])).unwrap()
}

fn run(dataset: &Dataset, decode: DecodeLevel) -> LintRun {
    let options = LintOptions {
        decode,
        ..LintOptions::default()
    };
    lint(dataset, &options, &|| {})
}

/// The RGB files of the pairs with findings of `code`.
fn flagged(run: &LintRun, code: Code) -> BTreeSet<String> {
    run.report
        .findings
        .iter()
        .filter(|f| f.code == code)
        .filter_map(|f| f.rgb.clone())
        .collect()
}

#[test]
fn duplicates_are_exactly_the_byte_identical_files() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = dataset(
        dir.path(),
        &[
            ("a", bmp(1, 0), bmp(2, 0)),
            // A copy of a: a duplicate pair.
            ("b", bmp(1, 0), bmp(2, 0)),
            // Same ends as a's files, different middle rows: not a duplicate.
            ("c", bmp(1, 9), bmp(2, 9)),
            // Same size as a's files, different bytes throughout.
            ("d", bmp(3, 0), bmp(4, 0)),
            // IR is a copy of RGB.
            ("e", bmp(5, 0), bmp(5, 0)),
            // IR has RGB's ends but another middle.
            ("f", bmp(6, 0), bmp(6, 7)),
        ],
    );
    for decode in [DecodeLevel::Header, DecodeLevel::Full] {
        let run = run(&dataset, decode);
        assert_eq!(
            flagged(&run, Code::IMG007),
            BTreeSet::from(["images/b.bmp".to_owned()]),
            "{decode:?}: {:#?}",
            run.report.findings
        );
        assert_eq!(
            flagged(&run, Code::PAIR006),
            BTreeSet::from(["images/e.bmp".to_owned()]),
            "{decode:?}: {:#?}",
            run.report.findings
        );
        let content: Vec<(u64, u64)> = run.pairs.iter().map(|p| p.content.unwrap()).collect();
        let [a, b, c, d, e, f] = content[..] else {
            panic!("{content:?}")
        };
        assert_eq!(a, b);
        assert!(
            a.0 != c.0 && a.1 != c.1 && a.0 != d.0 && a.1 != d.1,
            "{decode:?}"
        );
        assert_eq!(e.0, e.1);
        assert_ne!(f.0, f.1);
        if decode == DecodeLevel::Header {
            // Every file's ends, then the files whose ends collide (all but d's) in full.
            let len = bmp(0, 0).len() as u64;
            let edges = 12 * 2 * CONTENT_EDGE as u64;
            assert_eq!(run.report.summary.bytes_read, edges + 10 * len);
        }
    }
}

#[test]
fn header_mode_reads_a_fraction_of_big_files() {
    let dir = tempfile::tempdir().unwrap();
    // 640x512 BMPs, about 960 KiB each.
    let pairs: Vec<(String, Vec<u8>, Vec<u8>)> = (0..8u8)
        .map(|i| {
            let (rgb, ir) = (
                bmp_of_size(640, 512, 2 * i, 0),
                bmp_of_size(640, 512, 2 * i + 1, 0),
            );
            (format!("{i:02}"), rgb, ir)
        })
        .collect();
    let pairs: Vec<(&str, Vec<u8>, Vec<u8>)> = pairs
        .iter()
        .map(|(n, rgb, ir)| (n.as_str(), rgb.clone(), ir.clone()))
        .collect();
    let total: u64 = pairs
        .iter()
        .map(|(_, rgb, ir)| (rgb.len() + ir.len()) as u64)
        .sum();
    let dataset = dataset(dir.path(), &pairs);

    let header = run(&dataset, DecodeLevel::Header);
    assert_eq!(header.report.findings, vec![]);
    assert_eq!(
        header.report.summary.bytes_read,
        16 * 2 * CONTENT_EDGE as u64
    );
    assert!(header.report.summary.bytes_read * 7 < total, "{total}");

    let full = run(&dataset, DecodeLevel::Full);
    assert_eq!(full.report.summary.bytes_read, total);
    let json: serde_json::Value = serde_json::from_str(&header.report.to_json()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(
        json["summary"]["bytes_read"],
        header.report.summary.bytes_read
    );
}
