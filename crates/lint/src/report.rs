//! Findings and the three report formats: human, JSON and SARIF 2.1.0.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::codes::{Code, Severity};
use crate::settings::Levels;

/// JSON report format version.
pub const REPORT_VERSION: u32 = 1;

/// One problem, with the files (relative to the dataset root) and label line it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable rule code.
    pub code: Code,
    /// Severity after levels were applied.
    pub severity: Severity,
    /// What is wrong, specifically.
    pub message: String,
    /// The RGB image.
    pub rgb: Option<String>,
    /// The IR image.
    pub ir: Option<String>,
    /// The label file.
    pub label: Option<String>,
    /// 1-based line in the label (or list) file.
    pub line: Option<usize>,
    /// The IR image's shift against the RGB image in original pixels, `[dx, dy]` (right and
    /// down positive), for PAIR007 and DS005.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<[i32; 2]>,
    /// Which of the files the finding is about (where it is shown and annotated).
    #[serde(skip)]
    pub subject: Subject,
}

/// Which file of a finding is the one to show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Subject {
    /// The dataset as a whole (or whichever file is set).
    #[default]
    Dataset,
    /// The RGB image.
    Rgb,
    /// The IR image.
    Ir,
    /// The label file.
    Label,
}

impl Finding {
    /// A finding at the code's default severity, about no file yet.
    pub fn new(code: Code, message: String) -> Self {
        Self {
            code,
            severity: code.default_severity(),
            message,
            rgb: None,
            ir: None,
            label: None,
            line: None,
            offset: None,
            subject: Subject::Dataset,
        }
    }

    /// The file the finding is about: its subject's path, else label, IR or RGB.
    pub fn primary_path(&self) -> Option<&str> {
        let subject = match self.subject {
            Subject::Rgb => self.rgb.as_deref(),
            Subject::Ir => self.ir.as_deref(),
            Subject::Label => self.label.as_deref(),
            Subject::Dataset => None,
        };
        subject
            .or(self.label.as_deref())
            .or(self.ir.as_deref())
            .or(self.rgb.as_deref())
    }

    /// `path:line`, `path` or `dataset`: where the finding is.
    pub(crate) fn location(&self) -> String {
        match (self.primary_path(), self.line) {
            (Some(path), Some(line)) => format!("{path}:{line}"),
            (Some(path), None) => path.to_owned(),
            (None, _) => "dataset".to_owned(),
        }
    }

    fn sort_key(
        &self,
    ) -> (
        Option<&str>,
        Option<&str>,
        Option<&str>,
        Option<usize>,
        Code,
    ) {
        (
            self.rgb.as_deref(),
            self.ir.as_deref(),
            self.label.as_deref(),
            self.line,
            self.code,
        )
    }
}

/// Counts over a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Pairs checked.
    pub pairs: usize,
    /// Error-level findings.
    pub errors: usize,
    /// Warning-level findings.
    pub warnings: usize,
    /// Info-level findings.
    pub infos: usize,
    /// Findings per code.
    pub by_code: BTreeMap<String, usize>,
    /// Findings resolved by `--fix` in this run (not listed in `findings`).
    pub fixed: usize,
    /// Bytes read from image files (headers, ends, confirmations of equal files, whole files
    /// in full decode).
    #[serde(default)]
    pub bytes_read: u64,
}

/// A lint report: the summary and every finding in a deterministic order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Format version.
    pub version: u32,
    /// Counts.
    pub summary: Summary,
    /// Findings, sorted by file, line and code.
    pub findings: Vec<Finding>,
}

impl Default for Report {
    /// An empty report: no pairs, no findings.
    fn default() -> Self {
        Self::new(0, Vec::new(), &Levels::default())
    }
}

impl Report {
    /// Builds a report: drops allowed codes, applies severities, sorts, counts.
    pub fn new(pairs: usize, findings: Vec<Finding>, levels: &Levels) -> Self {
        let mut findings: Vec<Finding> = findings
            .into_iter()
            .filter_map(|mut f| {
                f.severity = levels.severity(f.code)?;
                Some(f)
            })
            .collect();
        findings.sort_by(|a, b| {
            a.sort_key()
                .cmp(&b.sort_key())
                .then_with(|| a.message.cmp(&b.message))
        });
        let mut report = Self {
            version: REPORT_VERSION,
            summary: Summary {
                pairs,
                ..Summary::default()
            },
            findings,
        };
        report.recount();
        report
    }

    /// A report holding one DS001 finding for a dataset that could not be opened.
    pub fn invalid_dataset(message: String) -> Self {
        Self::new(
            0,
            vec![Finding::new(Code::DS001, message)],
            &Levels::default(),
        )
    }

    /// Removes the findings for which `fixed` is true and counts them as fixed.
    pub fn mark_fixed(&mut self, fixed: impl Fn(&Finding) -> bool) {
        let before = self.findings.len();
        self.findings.retain(|f| !fixed(f));
        self.summary.fixed += before - self.findings.len();
        self.recount();
    }

    fn recount(&mut self) {
        let summary = &mut self.summary;
        summary.errors = 0;
        summary.warnings = 0;
        summary.infos = 0;
        summary.by_code.clear();
        for f in &self.findings {
            match f.severity {
                Severity::Error => summary.errors += 1,
                Severity::Warning => summary.warnings += 1,
                Severity::Info => summary.infos += 1,
            }
            *summary.by_code.entry(f.code.to_string()).or_insert(0) += 1;
        }
    }

    /// Whether the report holds a DS001 finding (exit code 2).
    pub fn has_config_error(&self) -> bool {
        self.findings.iter().any(|f| f.code == Code::DS001)
    }

    /// 0: no errors (nor warnings with `strict`); 1: findings; 2: the dataset description is
    /// invalid.
    pub fn exit_code(&self, strict: bool) -> u8 {
        if self.has_config_error() {
            2
        } else if self.summary.errors > 0 || (strict && self.summary.warnings > 0) {
            1
        } else {
            0
        }
    }

    /// The JSON report.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }

    /// The human report: a count per code first, then the findings grouped by code, at most
    /// `per_code` each (0: all).
    pub fn to_human(&self, header: &str, per_code: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}");
        let mut groups: BTreeMap<(Severity, Code), Vec<&Finding>> = BTreeMap::new();
        for f in &self.findings {
            groups.entry((f.severity, f.code)).or_default().push(f);
        }
        if !groups.is_empty() {
            out.push('\n');
        }
        for ((severity, code), findings) in &groups {
            let _ = writeln!(
                out,
                "  {:<8}{:<9}{:>7}  {}",
                severity.as_str(),
                code.as_str(),
                findings.len(),
                code.title()
            );
        }
        for ((severity, code), findings) in &groups {
            let _ = writeln!(
                out,
                "\n{code} {}: {} ({})",
                severity.as_str(),
                code.title(),
                findings.len()
            );
            let shown = if per_code == 0 {
                findings.len()
            } else {
                per_code.min(findings.len())
            };
            for f in &findings[..shown] {
                let _ = writeln!(out, "  {}: {}", f.location(), f.message);
            }
            if shown < findings.len() {
                let _ = writeln!(
                    out,
                    "  ... and {} more (--max-per-code 0 or --format json lists all)",
                    findings.len() - shown
                );
            }
        }
        let s = &self.summary;
        let _ = write!(
            out,
            "\n{} error{}, {} warning{}, {} info{} in {} pairs",
            s.errors,
            plural(s.errors),
            s.warnings,
            plural(s.warnings),
            s.infos,
            plural(s.infos),
            s.pairs
        );
        if s.fixed > 0 {
            let _ = write!(out, "; fixed {}", s.fixed);
        }
        out.push('\n');
        out
    }

    /// A SARIF 2.1.0 log (for GitHub code scanning and other CI annotations). `root_uri` is
    /// the dataset root as a `file://` URI; result locations are relative to it.
    pub fn to_sarif(&self, root_uri: &str) -> String {
        let rules: Vec<_> = Code::ALL
            .iter()
            .map(|code| {
                json!({
                    "id": code.as_str(),
                    "shortDescription": { "text": code.title() },
                    "defaultConfiguration": { "level": sarif_level(code.default_severity()) },
                    "properties": { "fixable": code.fixable() },
                })
            })
            .collect();
        let results: Vec<_> = self
            .findings
            .iter()
            .map(|f| {
                let mut result = json!({
                    "ruleId": f.code.as_str(),
                    "ruleIndex": Code::ALL.iter().position(|c| *c == f.code),
                    "level": sarif_level(f.severity),
                    "message": { "text": f.message },
                });
                if let Some(path) = f.primary_path() {
                    let mut location = json!({
                        "physicalLocation": {
                            "artifactLocation": { "uri": path, "uriBaseId": "DATASETROOT" },
                        }
                    });
                    if let Some(line) = f.line {
                        location["physicalLocation"]["region"] = json!({ "startLine": line });
                    }
                    result["locations"] = json!([location]);
                }
                result
            })
            .collect();
        let log = json!({
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": { "driver": {
                    "name": "fusekit",
                    "version": env!("CARGO_PKG_VERSION"),
                    "informationUri": "https://github.com/fusekit/fusekit",
                    "rules": rules,
                }},
                "originalUriBaseIds": { "DATASETROOT": { "uri": root_uri } },
                "results": results,
            }],
        });
        serde_json::to_string_pretty(&log).expect("a SARIF log serialises")
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn sarif_level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Info => "note",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Level;

    fn sample() -> Vec<Finding> {
        let mut a = Finding::new(Code::LBL009, "duplicate of line 1".into());
        a.label = Some("labels/b.txt".into());
        a.line = Some(2);
        let mut b = Finding::new(Code::PAIR001, "no IR partner".into());
        b.rgb = Some("images/a.jpg".into());
        vec![
            a,
            b,
            Finding::new(Code::DS003, "class 1 `car` is never used".into()),
        ]
    }

    #[test]
    fn levels_sorting_counts_and_exit_codes() {
        let report = Report::new(2, sample(), &Levels::default());
        assert_eq!(
            (
                report.summary.errors,
                report.summary.warnings,
                report.summary.infos
            ),
            (1, 1, 1)
        );
        assert_eq!(report.findings[0].code, Code::DS003);
        assert_eq!(report.exit_code(false), 1);
        let mut levels = Levels::default();
        levels.set("PAIR001", Level::Allow).unwrap();
        let report = Report::new(2, sample(), &levels);
        assert_eq!(report.exit_code(false), 0);
        assert_eq!(report.exit_code(true), 1);
        assert_eq!(Report::invalid_dataset("bad".into()).exit_code(false), 2);
    }

    #[test]
    fn json_has_the_documented_shape() {
        let report = Report::new(2, sample(), &Levels::default());
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(value["version"], 1);
        assert_eq!(value["summary"]["by_code"]["LBL009"], 1);
        let f = &value["findings"][1];
        for key in ["code", "severity", "message", "rgb", "ir", "label", "line"] {
            assert!(f.get(key).is_some(), "missing {key}");
        }
        assert_eq!(f["severity"], "warning");
        assert_eq!(f["line"], 2);
    }

    #[test]
    fn sarif_and_human() {
        let report = Report::new(2, sample(), &Levels::default());
        let sarif: serde_json::Value =
            serde_json::from_str(&report.to_sarif("file:///d/")).unwrap();
        assert_eq!(sarif["version"], "2.1.0");
        let results = sarif["runs"][0]["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[1]["level"], "warning");
        assert_eq!(
            results[1]["locations"][0]["physicalLocation"]["region"]["startLine"],
            2
        );
        let human = report.to_human("lint", 20);
        assert!(
            human.contains("error   PAIR001        1  RGB image has no IR partner"),
            "{human}"
        );
        assert!(
            human.contains("labels/b.txt:2: duplicate of line 1"),
            "{human}"
        );
        assert!(
            human.ends_with("1 error, 1 warning, 1 info in 2 pairs\n"),
            "{human}"
        );
    }
}
