//! End-to-end imports of miniature LLVIP and VOC layouts built in temporary folders.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use fusekit_dataset::{Dataset, IrPartner};
use fusekit_import::{
    ImportError, ImportOptions, ImportReport, Layout, MalformedKind, Progress, SplitRule, Stage,
    TransferMode, import,
};

fn jpeg(path: &Path, width: u32, height: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(width, height, image::Rgb([90, 120, 150]))
        .save(path)
        .unwrap();
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn object(name: &str, bndbox: &str) -> String {
    format!("  <object>\n    <name>{name}</name>\n    <bndbox>{bndbox}</bndbox>\n  </object>\n")
}

fn coords(xmin: &str, ymin: &str, xmax: &str, ymax: &str) -> String {
    format!("<xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>")
}

fn annotation(size: Option<(u32, u32)>, objects: &[String]) -> String {
    let size = size.map_or(String::new(), |(w, h)| {
        format!("  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n")
    });
    format!(
        "<annotation>\n  <folder>LLVIP</folder>\n{size}{}</annotation>\n",
        objects.concat()
    )
}

/// Miniature LLVIP: train 010001 (64x48, good + clipped + 4 malformed objects), 010002 (40x40,
/// no <size>, person + car), 010003 (no XML: background), 010004 (broken XML), 010005 (no IR);
/// test 020001 (64x48, zero <size>), 020002 (40x40, background); 099999.xml without image.
fn llvip() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    for (split, stem, w, h, ir) in [
        ("train", "010001", 64, 48, true),
        ("train", "010002", 40, 40, true),
        ("train", "010003", 64, 48, true),
        ("train", "010004", 64, 48, true),
        ("train", "010005", 64, 48, false),
        ("test", "020001", 64, 48, true),
        ("test", "020002", 40, 40, true),
    ] {
        jpeg(&src.join(format!("visible/{split}/{stem}.jpg")), w, h);
        if ir {
            jpeg(&src.join(format!("infrared/{split}/{stem}.jpg")), w, h);
        }
    }
    let ann = src.join("Annotations");
    write(
        &ann.join("010001.xml"),
        &annotation(
            Some((64, 48)),
            &[
                object("person", &coords("10", "8", "30", "24")),
                object("person", &coords("-0.5", "40", "64.5", "48")),
                object("person", &coords("30", "10", "20", "20")),
                object("person", &coords("1", "two", "3", "4")),
                object("person", "<xmin>1</xmin><ymin>2</ymin><xmax>3</xmax>"),
                object("person", &coords("0", "0", "70", "10")),
            ],
        ),
    );
    write(
        &ann.join("010002.xml"),
        &annotation(
            None,
            &[
                object("person", &coords("4", "4", "12", "20")),
                object("car", &coords("10", "10", "20", "20")),
            ],
        ),
    );
    write(
        &ann.join("010004.xml"),
        "<annotation>\n<object>\n</annotation>\n",
    );
    write(
        &ann.join("010005.xml"),
        &annotation(
            Some((64, 48)),
            &[object("person", &coords("1", "1", "9", "9"))],
        ),
    );
    write(
        &ann.join("020001.xml"),
        &annotation(
            Some((0, 0)),
            &[object("person", &coords("0", "0", "64", "48"))],
        ),
    );
    write(
        &ann.join("099999.xml"),
        &annotation(
            Some((64, 48)),
            &[object("person", &coords("1", "1", "9", "9"))],
        ),
    );
    dir
}

fn run(layout: &Layout, out: &Path, options: &ImportOptions) -> Result<ImportReport, ImportError> {
    import(layout, out, options, &|_| {})
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Files below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut files: Vec<String> = walk(dir)
        .iter()
        .map(|p| {
            p.strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[cfg(unix)]
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (std::fs::metadata(a).unwrap(), std::fs::metadata(b).unwrap());
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

const LABEL_010001: &str =
    "1 0.312500 0.333333 0.312500 0.333333\n1 0.500000 0.916667 1.000000 0.166667\n";
const LABEL_010002: &str =
    "1 0.200000 0.300000 0.200000 0.400000\n0 0.375000 0.375000 0.250000 0.250000\n";
const LABEL_020001: &str = "1 0.500000 0.500000 1.000000 1.000000\n";

#[test]
fn llvip_import_places_files_writes_exact_labels_and_reports_everything() {
    let src = llvip();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("llvip-yolo");
    let layout = Layout::llvip(src.path());
    let events = AtomicUsize::new(0);
    let begun = std::sync::Mutex::new(Vec::new());
    let report = import(
        &layout,
        &out,
        &ImportOptions::default(),
        &|event| match event {
            Progress::Begin { stage, total } => begun.lock().unwrap().push((stage, total)),
            Progress::Step => {
                events.fetch_add(1, Ordering::Relaxed);
            }
        },
    )
    .unwrap();
    assert_eq!(
        begun.into_inner().unwrap(),
        vec![(Stage::Read, 4), (Stage::Write, 5)]
    );
    assert_eq!(events.load(Ordering::Relaxed), 9);

    assert_eq!(
        tree(&out),
        [
            "data.yaml",
            "images/train/010001.jpg",
            "images/train/010002.jpg",
            "images/train/010003.jpg",
            "images/val/020001.jpg",
            "images/val/020002.jpg",
            "imagesIR/train/010001.jpg",
            "imagesIR/train/010002.jpg",
            "imagesIR/train/010003.jpg",
            "imagesIR/val/020001.jpg",
            "imagesIR/val/020002.jpg",
            "labels/train/010001.txt",
            "labels/train/010002.txt",
            "labels/val/020001.txt",
        ]
    );
    // Each image normalised by its own size: 64x48 from <size>, 40x40 and 64x48 from headers.
    assert_eq!(read(out.join("labels/train/010001.txt")), LABEL_010001);
    assert_eq!(read(out.join("labels/train/010002.txt")), LABEL_010002);
    assert_eq!(read(out.join("labels/val/020001.txt")), LABEL_020001);
    #[cfg(unix)]
    {
        assert!(same_file(
            &src.path().join("visible/train/010001.jpg"),
            &out.join("images/train/010001.jpg")
        ));
        assert!(same_file(
            &src.path().join("infrared/test/020002.jpg"),
            &out.join("imagesIR/val/020002.jpg")
        ));
    }

    assert_eq!(report.names, ["car", "person"]);
    assert!(!report.names_given);
    assert_eq!(
        (
            report.train.pairs,
            report.train.labelled,
            report.train.background
        ),
        (3, 2, 1)
    );
    assert_eq!(
        (
            report.train.boxes,
            report.train.clipped_boxes,
            report.train.size_from_image
        ),
        (4, 1, 1)
    );
    assert_eq!(
        (report.val.pairs, report.val.labelled, report.val.background),
        (2, 1, 1)
    );
    assert_eq!((report.val.boxes, report.val.size_from_image), (1, 1));
    assert_eq!((report.transfer.linked, report.transfer.copied), (10, 0));
    assert_eq!(report.transfer.link_error, None);
    let malformed: Vec<_> = report
        .malformed
        .iter()
        .map(|m| (m.file.clone(), m.object, m.line, m.kind))
        .collect();
    let file = PathBuf::from("Annotations/010001.xml");
    assert_eq!(
        malformed,
        vec![
            (file.clone(), 3, 12, MalformedKind::Inverted),
            (file.clone(), 4, 16, MalformedKind::NotANumber),
            (file.clone(), 5, 20, MalformedKind::MissingField),
            (file.clone(), 6, 24, MalformedKind::OutsideImage),
        ]
    );
    assert_eq!(report.malformed[0].reason, "xmin 30 >= xmax 20");
    assert_eq!(report.malformed[2].reason, "missing <ymax>");
    assert_eq!(report.unusable.len(), 1);
    assert_eq!(report.unusable[0].file, Path::new("Annotations/010004.xml"));
    assert_eq!(report.unusable[0].line, Some(3));
    assert!(report.unusable[0].reason.starts_with("invalid XML"));
    assert_eq!(
        report.missing_ir,
        [PathBuf::from("visible/train/010005.jpg")]
    );
    assert_eq!(
        report.orphan_annotations,
        [PathBuf::from("Annotations/099999.xml")]
    );
    assert!(report.stem_clashes.is_empty() && report.stale.is_empty());
    assert_eq!(report.problem_count(), 4 + 1 + 1 + 1);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["split"]["kind"], "folders");
    assert_eq!(json["malformed"][3]["kind"], "outside_image");
    assert_eq!(json["transfer"]["mode"], "link");

    // The data yaml opens and pairs every imported image with its IR partner and label.
    let dataset = Dataset::open(&out, None).unwrap();
    assert_eq!(dataset.names, ["car", "person"]);
    let splits: Vec<&str> = dataset.splits.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(splits, ["train", "val"]);
    let scan = dataset.scan();
    assert_eq!(scan.pairs.len(), 5);
    assert!(scan.orphans.is_empty() && scan.clashes.is_empty() && scan.missing.is_empty());
    for pair in &scan.pairs {
        assert!(matches!(pair.ir, IrPartner::Exact(_)), "{pair:?}");
        let label = pair.label.as_ref().unwrap();
        let stem = pair.rgb.file_stem().unwrap().to_str().unwrap();
        assert_eq!(
            label.is_file(),
            !["010003", "020002"].contains(&stem),
            "{stem}"
        );
    }
    assert!(read(out.join("data.yaml")).starts_with("# Written by `fusekit import llvip`"));
}

#[test]
fn non_empty_out_is_refused_and_force_rewrites_only_our_files() {
    let src = llvip();
    let out = tempfile::tempdir().unwrap();
    write(&out.path().join("notes.md"), "mine");
    let layout = Layout::llvip(src.path());
    let err = run(&layout, out.path(), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::OutNotEmpty { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(tree(out.path()), ["notes.md"]);

    let force = ImportOptions {
        force: true,
        ..ImportOptions::default()
    };
    let first = run(&layout, out.path(), &force).unwrap();
    let files = tree(out.path());
    let yaml = read(out.path().join("data.yaml"));
    // A hand-edited label and a foreign file: the label is ours and rewritten, the other kept.
    write(
        &out.path().join("labels/train/010001.txt"),
        "0 0.5 0.5 1 1\n",
    );
    write(&out.path().join("labels/train/extra.txt"), "keep me");
    let second = run(&layout, out.path(), &force).unwrap();
    assert_eq!(
        read(out.path().join("labels/train/010001.txt")),
        LABEL_010001
    );
    assert_eq!(read(out.path().join("labels/train/extra.txt")), "keep me");
    assert_eq!(read(out.path().join("notes.md")), "mine");
    assert_eq!(read(out.path().join("data.yaml")), yaml);
    assert_eq!(second.stale, [PathBuf::from("labels/train/extra.txt")]);
    assert_eq!(
        ImportReport {
            stale: Vec::new(),
            ..second
        },
        first
    );
    std::fs::remove_file(out.path().join("labels/train/extra.txt")).unwrap();
    assert_eq!(tree(out.path()), files);
    #[cfg(unix)]
    assert!(same_file(
        &src.path().join("visible/train/010002.jpg"),
        &out.path().join("images/train/010002.jpg")
    ));
    // The source is untouched by the rewrites through the links.
    assert_eq!(
        image::image_dimensions(src.path().join("visible/train/010002.jpg")).unwrap(),
        (40, 40)
    );
}

#[test]
fn given_names_report_unknown_classes_and_copy_mode_copies() {
    let src = llvip();
    let out = tempfile::tempdir().unwrap();
    let options = ImportOptions {
        names: Some(vec!["person".into()]),
        transfer: TransferMode::Copy,
        ..ImportOptions::default()
    };
    let report = run(&Layout::llvip(src.path()), &out.path().join("o"), &options).unwrap();
    assert_eq!(report.names, ["person"]);
    assert!(report.names_given);
    assert_eq!((report.transfer.linked, report.transfer.copied), (0, 10));
    #[cfg(unix)]
    assert!(!same_file(
        &src.path().join("visible/train/010001.jpg"),
        &out.path().join("o/images/train/010001.jpg")
    ));
    let unknown: Vec<_> = report
        .malformed
        .iter()
        .filter(|m| m.kind == MalformedKind::UnknownClass)
        .map(|m| {
            (
                m.file.to_string_lossy().into_owned(),
                m.object,
                m.reason.clone(),
            )
        })
        .collect();
    assert_eq!(
        unknown,
        [(
            "Annotations/010002.xml".to_owned(),
            2,
            "class `car` is not in the given names".to_owned()
        )]
    );
    assert_eq!(
        read(out.path().join("o/labels/train/010002.txt")),
        "0 0.200000 0.300000 0.200000 0.400000\n"
    );
    assert_eq!(
        Dataset::open(&out.path().join("o"), None).unwrap().names,
        ["person"]
    );

    let bad = ImportOptions {
        names: Some(vec!["a".into(), " a ".into()]),
        ..ImportOptions::default()
    };
    let err = run(&Layout::llvip(src.path()), &out.path().join("p"), &bad).unwrap_err();
    assert!(matches!(err, ImportError::Names(_)), "{err}");
}

#[test]
fn missing_folders_and_empty_sources_write_nothing() {
    let src = tempfile::tempdir().unwrap();
    let out = src.path().join("out");
    let err = run(&Layout::llvip(src.path()), &out, &ImportOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::MissingFolder {
                role: "annotation",
                ..
            }
        ),
        "{err}"
    );
    for folder in ["Annotations", "visible/train", "infrared/train"] {
        std::fs::create_dir_all(src.path().join(folder)).unwrap();
    }
    jpeg(&src.path().join("visible/train/a.jpg"), 8, 8);
    let err = run(&Layout::llvip(src.path()), &out, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::Nothing { .. }), "{err}");
    assert!(err.to_string().contains("1 without IR partner"), "{err}");
    assert!(!out.exists());
}

/// A VOC folder: a (train), b (in both lists), c and e (val; e listed as `e.jpg`, its IR is a
/// PNG), d (unlisted), x and x (same stem, two extensions); `ghost` listed without image.
fn voc() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    for stem in ["a", "b", "c", "d"] {
        jpeg(&src.join(format!("JPEGImages/{stem}.jpg")), 32, 16);
        jpeg(&src.join(format!("JPEGImagesIR/{stem}.jpg")), 32, 16);
        write(
            &src.join(format!("Annotations/{stem}.xml")),
            &annotation(
                Some((32, 16)),
                &[object("dog", &coords("0", "0", "16", "8"))],
            ),
        );
    }
    jpeg(&src.join("JPEGImages/e.jpg"), 32, 16);
    jpeg(&src.join("JPEGImagesIR/e.png"), 32, 16);
    jpeg(&src.join("JPEGImages/x.jpg"), 32, 16);
    jpeg(&src.join("JPEGImages/x.png"), 32, 16);
    write(&src.join("ImageSets/Main/train.txt"), "a\nb\n\nghost\n");
    write(&src.join("ImageSets/Main/val.txt"), "c\nb\ne.jpg 1\n");
    dir
}

#[test]
fn voc_uses_image_set_lists_and_reports_list_problems() {
    let src = voc();
    let out = src.path().join("yolo");
    let layout = Layout::voc(src.path(), None);
    assert_eq!(
        layout.split,
        SplitRule::Lists {
            train: Some(src.path().join("ImageSets/Main/train.txt")),
            val: Some(src.path().join("ImageSets/Main/val.txt")),
        }
    );
    let report = run(&layout, &out, &ImportOptions::default()).unwrap();
    assert_eq!(
        tree(&out),
        [
            "data.yaml",
            "images/train/a.jpg",
            "images/val/c.jpg",
            "images/val/e.jpg",
            "imagesIR/train/a.jpg",
            "imagesIR/val/c.jpg",
            "imagesIR/val/e.png",
            "labels/train/a.txt",
            "labels/val/c.txt",
        ]
    );
    assert_eq!(
        read(out.join("labels/train/a.txt")),
        "0 0.250000 0.250000 0.500000 0.500000\n"
    );
    assert_eq!(report.names, ["dog"]);
    assert_eq!(report.listed_twice, ["b"]);
    assert_eq!(report.unlisted, [PathBuf::from("JPEGImages/d.jpg")]);
    assert_eq!(report.listed_missing.len(), 1);
    assert_eq!(
        (
            &report.listed_missing[0].list,
            report.listed_missing[0].line,
            report.listed_missing[0].stem.as_str()
        ),
        (&PathBuf::from("ImageSets/Main/train.txt"), 4, "ghost")
    );
    assert_eq!(
        report.stem_clashes,
        [vec![
            PathBuf::from("JPEGImages/x.jpg"),
            PathBuf::from("JPEGImages/x.png")
        ]]
    );
    assert!(report.orphan_annotations.is_empty());
    assert_eq!(
        (report.train.pairs, report.val.pairs, report.val.background),
        (1, 2, 1)
    );
    let scan = Dataset::open(&out, None).unwrap().scan();
    assert_eq!(scan.pairs.len(), 3);
    assert!(scan.pairs.iter().all(|p| p.ir.path().is_some()));
}

#[test]
fn voc_val_list_replaces_val_txt_and_no_lists_put_everything_in_train() {
    let src = voc();
    let list = src.path().join("my-val.txt");
    write(&list, "d\n");
    let report = run(
        &Layout::voc(src.path(), Some(list.clone())),
        &src.path().join("o1"),
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!((report.train.pairs, report.val.pairs), (2, 1));
    assert!(report.listed_twice.is_empty());

    std::fs::remove_dir_all(src.path().join("ImageSets")).unwrap();
    let layout = Layout::voc(src.path(), None);
    assert_eq!(
        layout.split,
        SplitRule::Lists {
            train: None,
            val: None
        }
    );
    let out = src.path().join("o2");
    let report = run(&layout, &out, &ImportOptions::default()).unwrap();
    assert_eq!((report.train.pairs, report.val.pairs), (5, 0));
    // val is empty but exists, so the data yaml opens.
    assert!(out.join("images/val").is_dir());
    assert_eq!(Dataset::open(&out, None).unwrap().scan().pairs.len(), 5);

    let missing = Layout::voc(src.path(), Some(src.path().join("nope.txt")));
    let err = run(&missing, &src.path().join("o3"), &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, ImportError::List { .. }), "{err}");
}
