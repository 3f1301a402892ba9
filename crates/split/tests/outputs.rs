//! The files `write_split` produces (golden), and the ways it protects what it did not write.

use std::path::{Path, PathBuf};

use fusekit_dataset::Dataset;
use fusekit_lint::{LintOptions, lint};
use fusekit_split::{GroupBy, SplitError, SplitParams, Stratify, WriteOutcome, plan, write_split};
use fusekit_synth::{Defect, SynthOptions, generate};

fn synth(dir: &Path, inject: Vec<Defect>) -> PathBuf {
    let options = SynthOptions {
        pairs: 30,
        width: 96,
        height: 80,
        scenes: 6,
        names: vec!["person".into(), "car".into()],
        inject,
        ..SynthOptions::default()
    };
    generate(dir, &options, &|| {}).unwrap().data_yaml
}

fn params() -> SplitParams {
    SplitParams {
        val: 0.2,
        test: 0.1,
        seed: 0,
        stratify: Stratify::Classes,
        near_dup_bits: Some(4),
        dedupe_near: false,
    }
}

fn split(yaml: &Path, out: &Path, force: bool) -> Result<WriteOutcome, SplitError> {
    let dataset = Dataset::open(yaml, None).unwrap();
    let run = lint(&dataset, &LintOptions::default(), &|| {});
    let group_by = GroupBy::Stem(regex::Regex::new(r"^(\d{2})").unwrap());
    let plan = plan(&dataset, &run, &group_by, &params(), &|| {});
    write_split(&dataset, &plan, &params(), &group_by, out, force).map(|(outcome, _)| outcome)
}

const FILES: [&str; 5] = [
    "train.txt",
    "val.txt",
    "test.txt",
    "split.yaml",
    "split.json",
];

/// Set `FUSEKIT_BLESS=1` to rewrite the golden files after an intended change.
#[test]
fn golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = synth(dir.path(), vec![Defect::Pair001, Defect::Img007]);
    let outcome = split(&yaml, dir.path(), false).unwrap();
    assert!(matches!(outcome, WriteOutcome::Written(ref files) if files.len() == 5));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for name in FILES {
        let got = std::fs::read_to_string(dir.path().join(name)).unwrap();
        if std::env::var_os("FUSEKIT_BLESS").is_some() {
            std::fs::create_dir_all(&golden).unwrap();
            std::fs::write(golden.join(name), &got).unwrap();
        }
        let want = std::fs::read_to_string(golden.join(name)).unwrap();
        assert_eq!(got, want, "{name} differs from tests/golden/{name}");
    }
}

#[test]
fn split_lists_are_read_back_as_a_dataset_with_the_same_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = synth(dir.path(), vec![Defect::Pair001]);
    split(&yaml, dir.path(), false).unwrap();
    let derived = Dataset::open(&dir.path().join("split.yaml"), None).unwrap();
    let names: Vec<&str> = derived.splits.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["train", "val", "test"]);
    let run = lint(&derived, &LintOptions::default(), &|| {});
    assert_eq!(
        run.report.summary.errors,
        0,
        "{}",
        run.report.to_human("", 0)
    );
    // 30 pairs less the one without IR partner.
    assert_eq!(run.report.summary.pairs, 29);
}

#[test]
fn split_yaml_keeps_the_ir_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = synth(dir.path(), Vec::new());
    let text = std::fs::read_to_string(&yaml).unwrap();
    std::fs::write(&yaml, format!("{text}ir_norm: fixed:27000,31000\n")).unwrap();
    split(&yaml, dir.path(), false).unwrap();
    let derived = Dataset::open(&dir.path().join("split.yaml"), None).unwrap();
    assert_eq!(
        derived.ir_norm,
        fusekit_dataset::IrNorm::Fixed {
            lo: 27_000,
            hi: 31_000
        }
    );
}

#[test]
fn rerun_is_a_no_op_and_a_change_rewrites() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = synth(dir.path(), vec![]);
    assert!(matches!(
        split(&yaml, dir.path(), false).unwrap(),
        WriteOutcome::Written(_)
    ));
    let before = std::fs::metadata(dir.path().join("train.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        split(&yaml, dir.path(), false).unwrap(),
        WriteOutcome::UpToDate
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("train.txt"))
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    // A label edit changes the inputs.
    let label = dir.path().join("labels/010001.txt");
    let text = std::fs::read_to_string(&label).unwrap();
    std::fs::write(&label, format!("{text}1 0.5 0.5 0.2 0.2\n")).unwrap();
    assert!(matches!(
        split(&yaml, dir.path(), false).unwrap(),
        WriteOutcome::Written(_)
    ));
}

#[test]
fn foreign_files_are_refused_then_backed_up_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = synth(dir.path(), vec![]);
    std::fs::write(dir.path().join("val.txt"), "my own list\n").unwrap();
    let err = split(&yaml, dir.path(), false).unwrap_err();
    assert!(
        err.to_string().contains("val.txt exists") && err.to_string().contains("--force"),
        "{err}"
    );
    assert!(
        !dir.path().join("train.txt").exists(),
        "nothing written when refused"
    );
    split(&yaml, dir.path(), true).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("val.txt.bak")).unwrap(),
        "my own list\n"
    );
    // An edit to a list fusekit wrote is protected the same way.
    std::fs::write(dir.path().join("train.txt"), "edited\n").unwrap();
    assert!(matches!(
        split(&yaml, dir.path(), false),
        Err(SplitError::Refused(_))
    ));
}

#[test]
fn the_dataset_own_lists_are_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), vec![]);
    let lists = dir.path().join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(
        lists.join("train.txt"),
        "./../images/010001.jpg\n./../images/010002.jpg\n",
    )
    .unwrap();
    let yaml = dir.path().join("lists.yaml");
    std::fs::write(&yaml, "train: lists/train.txt\nnames: [person, car]\n").unwrap();
    let err = split(&yaml, &lists, true).unwrap_err();
    assert!(
        err.to_string()
            .contains("one of the dataset's own split lists"),
        "{err}"
    );
}
