//! The report of an import for people: a header line, a table per side, the split and how the
//! images were placed, then one section per kind of problem (its first [`SHOWN`] entries), and
//! the data yaml written.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::layout::SplitRule;
use crate::report::{
    ImportReport, ListedMissing, MalformedObject, Side, Transfer, TransferMode, UnusableAnnotation,
};

/// Entries of one problem list printed before `--format json` is needed.
const SHOWN: usize = 10;

impl ImportReport {
    /// The report as `fusekit import` prints it: what was imported where, counts per side, the
    /// split rule, how images were placed, each problem list (at most ten entries each; `--format
    /// json` lists all) and the data yaml written. Every line ends with a newline.
    pub fn to_human(&self) -> String {
        let mut s = String::new();
        header(&mut s, self);
        side_table(&mut s, self);
        let _ = writeln!(s, "\n  split: {}", split_text(&self.split));
        let _ = writeln!(s, "  images: {}", transfer_text(&self.transfer));
        problems(&mut s, self);
        let _ = writeln!(s, "\nwrote {}", self.data_yaml.display());
        s
    }
}

/// `fusekit import PRESET SRC -> OUT: N pairs, CLASSES`.
fn header(s: &mut String, r: &ImportReport) {
    let _ = writeln!(
        s,
        "fusekit import {} {} -> {}: {} pairs, {}",
        r.preset,
        r.source.display(),
        r.out.display(),
        r.pairs(),
        names_text(&r.names, r.names_given)
    );
}

/// `no classes`, or how many classes, their names and whether they were given.
fn names_text(names: &[String], given: bool) -> String {
    if names.is_empty() {
        return "no classes".to_owned();
    }
    format!(
        "{} class{} ({}{})",
        names.len(),
        if names.len() == 1 { "" } else { "es" },
        names.join(", "),
        if given { ", as given" } else { "" }
    )
}

/// A blank line, then the counts of each side under a header row.
fn side_table(s: &mut String, r: &ImportReport) {
    let _ = writeln!(
        s,
        "\n  side     pairs  labelled  background     boxes  clipped  size from image"
    );
    for side in Side::ALL {
        let c = r.side(side);
        let _ = writeln!(
            s,
            "  {:<6}{:>8}{:>10}{:>12}{:>10}{:>9}{:>17}",
            side.as_str(),
            c.pairs,
            c.labelled,
            c.background,
            c.boxes,
            c.clipped_boxes,
            c.size_from_image
        );
    }
}

/// How pairs were assigned to train and val.
fn split_text(split: &SplitRule) -> String {
    match split {
        SplitRule::Folders { train, val } => format!(
            "folders {} -> train, {} -> val",
            train.join(", "),
            val.join(", ")
        ),
        SplitRule::Lists {
            train: None,
            val: None,
        } => "no split lists: everything is in train (make a val side with `fusekit split`)"
            .to_owned(),
        SplitRule::Lists { train, val } => {
            let list = |l: &Option<PathBuf>| {
                l.as_ref()
                    .map_or("(none)".to_owned(), |p| p.display().to_string())
            };
            format!("lists train {}, val {}", list(train), list(val))
        }
    }
}

/// How many image files were hard-linked or copied, and why links failed if they did.
fn transfer_text(t: &Transfer) -> String {
    match (&t.link_error, t.mode) {
        (Some(why), _) => format!(
            "{} hard-linked, {} copied (hard links failed: {why})",
            t.linked, t.copied
        ),
        (None, TransferMode::Copy) => format!("{} copied (--copy)", t.copied),
        (None, TransferMode::Link) => format!("{} hard-linked", t.linked),
    }
}

/// The `warnings (N):` heading when there are problems, then a section per non-empty list.
fn problems(s: &mut String, r: &ImportReport) {
    let count = r.problem_count();
    if count > 0 {
        let _ = writeln!(s, "\nwarnings ({count}):");
    }
    let malformed = "malformed objects, left out of the labels";
    section(s, malformed, &r.malformed, malformed_line);
    let unusable = "unusable annotation files, pairs skipped";
    section(s, unusable, &r.unusable, unusable_line);
    let missing_ir = "RGB images without IR partner, skipped";
    section(s, missing_ir, &r.missing_ir, path_line);
    let orphans = "annotations without image";
    section(s, orphans, &r.orphan_annotations, path_line);
    let clashes = "RGB images sharing a stem (one annotation), skipped";
    section(s, clashes, &r.stem_clashes, |files| clash_line(files));
    let listed_missing = "listed stems without image";
    section(s, listed_missing, &r.listed_missing, listed_missing_line);
    let listed_twice = "stems listed for both train and val, skipped";
    section(s, listed_twice, &r.listed_twice, String::clone);
    let unlisted = "images in no split list, skipped";
    section(s, unlisted, &r.unlisted, path_line);
    let stale = "files in --out not written by this import, left in place";
    section(s, stale, &r.stale, path_line);
}

/// `  TITLE (N):` and the first [`SHOWN`] entries, one a line, then how many were left out;
/// nothing for an empty list.
fn section<T>(s: &mut String, title: &str, entries: &[T], line: fn(&T) -> String) {
    if entries.is_empty() {
        return;
    }
    let _ = writeln!(s, "  {title} ({}):", entries.len());
    for entry in entries.iter().take(SHOWN) {
        let _ = writeln!(s, "    {}", line(entry));
    }
    if entries.len() > SHOWN {
        let _ = writeln!(
            s,
            "    ... and {} more (--format json lists all)",
            entries.len() - SHOWN
        );
    }
}

/// `FILE:LINE object N: REASON`.
fn malformed_line(m: &MalformedObject) -> String {
    format!(
        "{}:{} object {}: {}",
        m.file.display(),
        m.line,
        m.object,
        m.reason
    )
}

/// `FILE:LINE: REASON`, or `FILE: REASON` when the problem has no line.
fn unusable_line(u: &UnusableAnnotation) -> String {
    match u.line {
        Some(line) => format!("{}:{line}: {}", u.file.display(), u.reason),
        None => format!("{}: {}", u.file.display(), u.reason),
    }
}

/// The path as displayed.
fn path_line<P: AsRef<Path>>(path: &P) -> String {
    path.as_ref().display().to_string()
}

/// The files sharing a stem, comma-separated.
fn clash_line(files: &[PathBuf]) -> String {
    let files: Vec<String> = files.iter().map(path_line).collect();
    files.join(", ")
}

/// `LIST:LINE: STEM`.
fn listed_missing_line(m: &ListedMissing) -> String {
    format!("{}:{}: {}", m.list.display(), m.line, m.stem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{SideCounts, Transfer};

    #[test]
    fn small_report_reads_line_by_line() {
        let report = ImportReport {
            preset: "llvip".into(),
            source: "LLVIP".into(),
            out: "out".into(),
            data_yaml: "out/data.yaml".into(),
            split: SplitRule::Folders {
                train: vec!["train".into()],
                val: vec!["test".into()],
            },
            names: vec!["person".into()],
            names_given: false,
            train: SideCounts {
                pairs: 3,
                labelled: 2,
                background: 1,
                boxes: 5,
                clipped_boxes: 1,
                size_from_image: 0,
            },
            val: SideCounts::default(),
            transfer: Transfer {
                mode: TransferMode::Copy,
                linked: 0,
                copied: 6,
                link_error: None,
            },
            malformed: Vec::new(),
            unusable: Vec::new(),
            missing_ir: (0..12)
                .map(|i| format!("visible/train/{i:02}.jpg").into())
                .collect(),
            orphan_annotations: Vec::new(),
            stem_clashes: Vec::new(),
            listed_missing: Vec::new(),
            listed_twice: Vec::new(),
            unlisted: Vec::new(),
            stale: Vec::new(),
        };
        let text = report.to_human();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "fusekit import llvip LLVIP -> out: 3 pairs, 1 class (person)",
                "",
                "  side     pairs  labelled  background     boxes  clipped  size from image",
                "  train        3         2           1         5        1                0",
                "  val          0         0           0         0        0                0",
                "",
                "  split: folders train -> train, test -> val",
                "  images: 6 copied (--copy)",
                "",
                "warnings (12):",
                "  RGB images without IR partner, skipped (12):",
                "    visible/train/00.jpg",
                "    visible/train/01.jpg",
                "    visible/train/02.jpg",
                "    visible/train/03.jpg",
                "    visible/train/04.jpg",
                "    visible/train/05.jpg",
                "    visible/train/06.jpg",
                "    visible/train/07.jpg",
                "    visible/train/08.jpg",
                "    visible/train/09.jpg",
                "    ... and 2 more (--format json lists all)",
                "",
                "wrote out/data.yaml",
            ]
        );
        assert!(text.ends_with("data.yaml\n"));
    }
}
