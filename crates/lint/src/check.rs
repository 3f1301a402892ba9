//! The checks: per pair (in parallel), then over the whole dataset.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use fusekit_dataset::{
    ContentSample, Dataset, ImageInfo, IrNorm, IrPartner, LabelLine, OrphanKind, PairRecord,
    ProbeError, ReadCounter, RowError, RowKind, Scan, content_identities, parse_labels,
    probe_image,
};
use rayon::prelude::*;

use crate::codes::{Code, Severity};
use crate::register::{Offset, estimate_offset};
use crate::report::{Finding, Report, Subject};
use crate::settings::LintOptions;

/// How far a normalised coordinate may stray outside [0, 1] before it is an error (LBL006).
const COORDINATE_TOLERANCE: f64 = 0.01;
/// Edges within this of the image border count as inside (one sixth-decimal step, and more).
const EDGE_EPSILON: f64 = 1e-5;
/// Shortest allowed image side (IMG003), as in Ultralytics.
const MIN_IMAGE_SIDE: u32 = 10;
/// Smallest box side in pixels at the training size (LBL011).
const MIN_BOX_PIXELS: f64 = 2.0;
/// Class imbalance ratio above which DS003 reports.
const IMBALANCE_RATIO: f64 = 50.0;
/// Fewest grey levels a cached IR plane may use before IMG009 reports.
const MIN_IR_LEVELS: u16 = 32;
/// Mean chroma (largest minus smallest channel, in 8-bit levels) above which an IR image has
/// colour (PAIR008). Grey content through a colour JPEG stays under 1; the generator's night
/// RGB images, dark and low in colour, measure 6 to 17.
const IR_CHROMA_LIMIT: f32 = 4.0;
/// Pairs whose IR shift is within this many pixels of the dataset's median shift share it
/// (DS005), or within half of `max_offset` when that is more: measurements of one rig's
/// offset scatter by a pixel or two, and by more in large images measured at reduced size.
const SHARED_OFFSET_TOLERANCE: f32 = 2.0;

/// A label file whose safe fixes are ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingFix {
    /// The label file.
    pub label: PathBuf,
    /// Its fixed text.
    pub text: String,
    /// The codes the fix resolves.
    pub codes: Vec<Code>,
}

/// What lint learned about one checked pair, for the stages after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairFacts {
    /// The RGB image.
    pub rgb: PathBuf,
    /// Its IR partner, when found.
    pub ir: Option<PathBuf>,
    /// Indices into the dataset's splits that list the pair.
    pub splits: Vec<usize>,
    /// No error-level finding is about this pair: it may be split, cached and trained on.
    pub usable: bool,
    /// Content identities of the RGB and IR files, when both could be read: equal for two
    /// files exactly when their bytes are (see [`fusekit_dataset::content_identities`]).
    pub content: Option<(u64, u64)>,
    /// Boxes per class in its label file (rows without errors).
    pub boxes: BTreeMap<u32, usize>,
}

/// A finished lint run: the report, the fixes `--fix` would write and the facts per pair.
#[derive(Debug, Clone)]
pub struct LintRun {
    /// Findings and summary.
    pub report: Report,
    /// Label files with safe fixes, in path order.
    pub fixes: Vec<PendingFix>,
    /// Every checked pair, in path order.
    pub pairs: Vec<PairFacts>,
}

/// A pair's measured IR shift and the largest shift its size allows.
#[derive(Clone, Copy)]
struct Registration {
    offset: Offset,
    /// `max_offset` in pixels for the pair's width.
    limit: f32,
}

struct PairOutcome {
    findings: Vec<Finding>,
    /// Content samples of the RGB and IR files, when both were probed.
    samples: Option<(ContentSample, ContentSample)>,
    /// Both images decoded to the same pixels (full decode only).
    same_pixels: bool,
    /// Content identities of the RGB and IR files, once confirmed over the dataset.
    content: Option<(u64, u64)>,
    /// Bits per sample of the IR image, when it was probed.
    ir_bits: Option<u8>,
    /// The IR image's shift against the RGB image, when both were decoded in full and it
    /// could be measured.
    registration: Option<Registration>,
    class_counts: BTreeMap<u32, usize>,
    fix: Option<PendingFix>,
}

/// Lints a dataset. `progress` is called once per checked pair (from worker threads).
pub fn lint(dataset: &Dataset, options: &LintOptions, progress: &(dyn Fn() + Sync)) -> LintRun {
    let scan = dataset.scan();
    lint_scan(dataset, &scan, options, progress)
}

/// The number of pairs a lint of `scan` will check (for sizing a progress bar).
pub fn pairs_to_check(scan: &Scan, options: &LintOptions) -> usize {
    options
        .limit
        .map_or(scan.pairs.len(), |limit| limit.min(scan.pairs.len()))
}

/// Lints an already scanned dataset.
pub fn lint_scan(
    dataset: &Dataset,
    scan: &Scan,
    options: &LintOptions,
    progress: &(dyn Fn() + Sync),
) -> LintRun {
    let counter = ReadCounter::new();
    let ctx = Context {
        dataset,
        options,
        counter: &counter,
    };
    let pairs = &scan.pairs[..pairs_to_check(scan, options)];
    let mut outcomes: Vec<PairOutcome> = pairs
        .par_iter()
        .map(|pair| {
            let outcome = ctx.check_pair(pair);
            progress();
            outcome
        })
        .collect();

    let mut findings = ctx.scan_findings(scan);
    findings.extend(ctx.confirm_content(pairs, &mut outcomes));
    findings.extend(ctx.duplicate_pairs(pairs, &outcomes));
    findings.extend(ctx.split_overlaps(pairs));
    findings.extend(ctx.class_usage(&outcomes));
    findings.extend(ctx.deep_ir(pairs, &outcomes));
    findings.extend(ctx.misregistration(pairs, &outcomes));
    let mut fixes = Vec::new();
    let mut facts = Vec::with_capacity(pairs.len());
    for (pair, outcome) in pairs.iter().zip(outcomes) {
        findings.extend(outcome.findings);
        fixes.extend(outcome.fix);
        facts.push(PairFacts {
            rgb: pair.rgb.clone(),
            ir: pair.ir.path().map(Path::to_path_buf),
            splits: pair.splits.clone(),
            usable: true,
            content: outcome.content,
            boxes: outcome.class_counts,
        });
    }
    let mut report = Report::new(pairs.len(), findings, &options.levels);
    report.summary.bytes_read = counter.get();
    let broken: HashSet<&str> = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .filter_map(|f| f.rgb.as_deref())
        .collect();
    for fact in &mut facts {
        fact.usable = !broken.contains(ctx.rel(&fact.rgb).as_str());
    }
    LintRun {
        report,
        fixes,
        pairs: facts,
    }
}

struct Context<'a> {
    dataset: &'a Dataset,
    options: &'a LintOptions,
    /// Bytes read from image files.
    counter: &'a ReadCounter,
}

/// Which file of a pair an image finding is about.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Rgb,
    Ir,
}

impl Context<'_> {
    fn rel(&self, path: &Path) -> String {
        self.dataset.relative(path).display().to_string()
    }

    /// The IR normalisation the caches will use.
    fn ir_norm(&self) -> IrNorm {
        self.options.ir_norm.unwrap_or(self.dataset.ir_norm)
    }

    fn finding(&self, code: Code, message: String) -> Finding {
        Finding::new(code, message)
    }

    fn pair_finding(&self, code: Code, pair: &PairRecord, message: String) -> Finding {
        let mut finding = self.finding(code, message);
        finding.rgb = Some(self.rel(&pair.rgb));
        finding.ir = pair.ir.path().map(|p| self.rel(p));
        finding.subject = Subject::Rgb;
        finding
    }

    fn label_finding(
        &self,
        code: Code,
        pair: &PairRecord,
        label: &Path,
        line: Option<usize>,
        message: String,
    ) -> Finding {
        let mut finding = self.pair_finding(code, pair, message);
        finding.label = Some(self.rel(label));
        finding.line = line;
        finding.subject = Subject::Label;
        finding
    }

    fn check_pair(&self, pair: &PairRecord) -> PairOutcome {
        let mut findings = Vec::new();
        let rgb = self.check_image(pair, Side::Rgb, &pair.rgb, &mut findings);
        let ir = match &pair.ir {
            IrPartner::Missing { expected } => {
                let message = match expected {
                    Some(path) => format!("no IR partner; expected {}", self.rel(path)),
                    None => format!(
                        "no IR partner: the path has no `{}` folder to swap",
                        self.dataset.ir.from.to_string_lossy()
                    ),
                };
                findings.push(self.pair_finding(Code::PAIR001, pair, message));
                None
            }
            IrPartner::OtherExtension(path) => {
                let expected = self
                    .dataset
                    .ir_path(&pair.rgb)
                    .map(|p| self.rel(&p))
                    .unwrap_or_default();
                let mut finding = self.pair_finding(
                    Code::PAIR004,
                    pair,
                    format!(
                        "IR partner is {} but {expected} is expected (same name and extension)",
                        self.rel(path)
                    ),
                );
                finding.subject = Subject::Ir;
                findings.push(finding);
                self.check_image(pair, Side::Ir, path, &mut findings)
            }
            IrPartner::Exact(path) => self.check_image(pair, Side::Ir, path, &mut findings),
        };
        if let (Some(rgb), Some(ir)) = (&rgb, &ir)
            && (rgb.width, rgb.height) != (ir.width, ir.height)
        {
            findings.push(self.pair_finding(
                Code::PAIR003,
                pair,
                format!(
                    "RGB is {}x{} but IR is {}x{}",
                    rgb.width, rgb.height, ir.width, ir.height
                ),
            ));
        }
        let same_pixels = match (
            rgb.as_ref().and_then(|i| i.pixels),
            ir.as_ref().and_then(|i| i.pixels),
        ) {
            (Some(a), Some(b)) => a.pixel_hash == b.pixel_hash,
            _ => false,
        };
        // An IR image that is the RGB image is PAIR006, not also PAIR008.
        if let (Some(ir_pixels), Some(ir_path)) =
            (ir.as_ref().and_then(|i| i.pixels), pair.ir.path())
            && ir_pixels.chroma > IR_CHROMA_LIMIT
            && !same_pixels
        {
            let rgb_chroma = rgb.as_ref().and_then(|i| i.pixels).map(|p| p.chroma);
            let swapped = if rgb_chroma.is_some_and(|c| c <= IR_CHROMA_LIMIT) {
                " and the RGB image is grey: are the RGB and IR folders swapped?"
            } else {
                ": a colour photo in the IR folder, or a false-colour palette?"
            };
            findings.push(self.image_finding(
                pair,
                Side::Ir,
                ir_path,
                Code::PAIR008,
                format!(
                    "image has colour (mean chroma {:.1} grey levels; grey IR stays under {IR_CHROMA_LIMIT}){swapped}",
                    ir_pixels.chroma
                ),
            ));
        }
        let registration = self.registration(rgb.as_ref(), ir.as_ref());
        let samples = rgb
            .as_ref()
            .zip(ir.as_ref())
            .map(|(a, b)| (a.content, b.content));
        let (class_counts, fix) = self.check_labels(pair, rgb.as_ref(), &mut findings);
        PairOutcome {
            findings,
            samples,
            same_pixels,
            content: None,
            ir_bits: ir.as_ref().map(|i| i.bits),
            registration,
            class_counts,
            fix,
        }
    }

    /// The IR image's shift against the RGB image, when both were decoded in full (their
    /// thumbnails kept), PAIR007 or DS005 is reported, and the shift could be measured.
    fn registration(
        &self,
        rgb: Option<&ImageInfo>,
        ir: Option<&ImageInfo>,
    ) -> Option<Registration> {
        let levels = &self.options.levels;
        if !levels.enabled(Code::PAIR007) && !levels.enabled(Code::DS005) {
            return None;
        }
        let (rgb, ir) = (rgb?, ir?);
        let offset = estimate_offset(rgb.thumbnail.as_ref()?, ir.thumbnail.as_ref()?)?;
        Some(Registration {
            offset,
            limit: self.options.max_offset.pixels(rgb.width) as f32,
        })
    }

    /// IR images shifted against their RGB images by more than `max_offset`: one DS005 for
    /// the dataset when most measured pairs share one shift (see [`shared_offset`]), and a
    /// PAIR007 for each other pair shifted too far.
    fn misregistration(&self, pairs: &[PairRecord], outcomes: &[PairOutcome]) -> Vec<Finding> {
        let measured: Vec<(&PairRecord, Registration)> = pairs
            .iter()
            .zip(outcomes)
            .filter_map(|(pair, outcome)| Some((pair, outcome.registration?)))
            .collect();
        let registrations: Vec<Registration> = measured.iter().map(|(_, r)| *r).collect();
        let shared = shared_offset(&registrations);
        let mut findings = Vec::new();
        if let Some(shared) = &shared {
            let [dx, dy] = shared.offset.rounded();
            let mut finding = self.finding(
                Code::DS005,
                format!(
                    "IR is shifted by {dx:+},{dy:+} px in {:.0}% of pairs ({} of the {} pairs whose shift could be measured are within {:.1} px of it; max_offset {}): the cameras are misaligned as a whole; shift the IR images back, or ignore it (`allow = [\"DS005\"]`) when the labels fit the IR images",
                    100.0 * shared.pairs as f64 / measured.len() as f64,
                    shared.pairs,
                    measured.len(),
                    shared.tolerance,
                    self.options.max_offset,
                ),
            );
            finding.offset = Some([dx, dy]);
            findings.push(finding);
        }
        for (pair, registration) in measured {
            let Registration { offset, limit } = registration;
            let shares = shared.as_ref().is_some_and(|s| s.covers(offset));
            if offset.length() <= limit || shares {
                continue;
            }
            let Some(ir_path) = pair.ir.path() else {
                continue;
            };
            let [dx, dy] = offset.rounded();
            let mut finding = self.image_finding(
                pair,
                Side::Ir,
                ir_path,
                Code::PAIR007,
                format!(
                    "image is shifted by {dx:+},{dy:+} px against the RGB image (more than max_offset {} = {limit:.1} px): boxes drawn on one image miss the object in the other",
                    self.options.max_offset
                ),
            );
            finding.offset = Some([dx, dy]);
            findings.push(finding);
        }
        findings
    }

    /// Turns the pairs' content samples into exact identities (reading whole only the files
    /// whose samples collide), then reports RGB and IR files that are the same (PAIR006) and
    /// files that could no longer be read (IMG001).
    fn confirm_content(&self, pairs: &[PairRecord], outcomes: &mut [PairOutcome]) -> Vec<Finding> {
        let mut files: Vec<(&Path, ContentSample)> = Vec::new();
        let mut checked: Vec<(usize, &Path)> = Vec::new();
        for (index, (pair, outcome)) in pairs.iter().zip(outcomes.iter()).enumerate() {
            if let (Some((rgb, ir)), Some(ir_path)) = (outcome.samples, pair.ir.path()) {
                files.push((&pair.rgb, rgb));
                files.push((ir_path, ir));
                checked.push((index, ir_path));
            }
        }
        let mut identities = content_identities(&files, self.counter).into_iter();
        let mut findings = Vec::new();
        for (index, ir_path) in checked {
            let (pair, outcome) = (&pairs[index], &mut outcomes[index]);
            let (rgb, ir) = (identities.next(), identities.next());
            match (rgb.expect("one per file"), ir.expect("one per file")) {
                (Ok(rgb), Ok(ir)) => outcome.content = Some((rgb, ir)),
                (rgb, ir) => {
                    for (side, path, result) in [
                        (Side::Rgb, pair.rgb.as_path(), rgb),
                        (Side::Ir, ir_path, ir),
                    ] {
                        if let Err(err) = result {
                            findings.push(self.image_finding(
                                pair,
                                side,
                                path,
                                Code::IMG001,
                                format!("image cannot be read to confirm its content: {err}"),
                            ));
                        }
                    }
                }
            }
            if outcome.content.is_some_and(|(rgb, ir)| rgb == ir) {
                findings.push(self.pair_finding(
                    Code::PAIR006,
                    pair,
                    "IR file is byte-identical to the RGB file".into(),
                ));
            } else if outcome.same_pixels {
                findings.push(self.pair_finding(
                    Code::PAIR006,
                    pair,
                    "IR image decodes to exactly the RGB pixels".into(),
                ));
            }
        }
        findings
    }

    /// A finding about one image of a pair, its message prefixed with the modality.
    fn image_finding(
        &self,
        pair: &PairRecord,
        side: Side,
        path: &Path,
        code: Code,
        message: String,
    ) -> Finding {
        let name = if side == Side::Rgb { "RGB" } else { "IR" };
        let mut finding = self.pair_finding(code, pair, format!("{name} {message}"));
        if side == Side::Ir {
            finding.ir = Some(self.rel(path));
            finding.subject = Subject::Ir;
        }
        finding
    }

    fn check_image(
        &self,
        pair: &PairRecord,
        side: Side,
        path: &Path,
        findings: &mut Vec<Finding>,
    ) -> Option<ImageInfo> {
        let mut push = |code: Code, message: String| {
            findings.push(self.image_finding(pair, side, path, code, message));
        };
        let ir_norm = (side == Side::Ir).then(|| self.ir_norm());
        match probe_image(path, self.options.decode, ir_norm, self.counter) {
            Err(ProbeError::Unsupported(what)) => {
                push(Code::IMG004, format!("image: {what} cannot be read"));
                None
            }
            Err(ProbeError::Decode {
                message,
                truncated: true,
            }) => {
                push(
                    Code::IMG002,
                    format!("image is truncated and cannot be decoded: {message}"),
                );
                None
            }
            Err(err) => {
                push(Code::IMG001, format!("image cannot be decoded: {err}"));
                None
            }
            Ok(info) => {
                if info.truncated {
                    push(
                        Code::IMG002,
                        format!(
                            "{} file is truncated (no end marker)",
                            format_name(info.format)
                        ),
                    );
                }
                // Too few pixels to judge grey levels by (IMG009) either.
                let too_small = info.width.min(info.height) < MIN_IMAGE_SIDE;
                if too_small {
                    push(
                        Code::IMG003,
                        format!(
                            "image is {}x{}; both sides must be at least {MIN_IMAGE_SIDE} px",
                            info.width, info.height
                        ),
                    );
                }
                if info.orientation != 1 {
                    push(
                        Code::IMG005,
                        format!(
                            "image has EXIF orientation {}: viewers rotate it, training does not",
                            info.orientation
                        ),
                    );
                }
                if info.pixels.is_some_and(|p| p.constant) {
                    push(Code::IMG006, "image is one constant colour".into());
                } else if let Some(levels) = info.pixels.and_then(|p| p.ir_levels)
                    && levels < MIN_IR_LEVELS
                    && !too_small
                {
                    let norm = self.ir_norm();
                    push(
                        Code::IMG009,
                        format!(
                            "image would be cached with {levels} grey levels (ir_norm {norm}: {}): the IR stream sees a nearly flat image; {}",
                            norm.describe(info.bits.min(16)),
                            if info.bits > 8 {
                                "use ir_norm auto, minmax or fixed:LO,HI"
                            } else {
                                "its content is nearly flat"
                            }
                        ),
                    );
                }
                Some(info)
            }
        }
    }

    fn check_labels(
        &self,
        pair: &PairRecord,
        rgb: Option<&ImageInfo>,
        findings: &mut Vec<Finding>,
    ) -> (BTreeMap<u32, usize>, Option<PendingFix>) {
        let mut counts = BTreeMap::new();
        let Some(label) = &pair.label else {
            findings.push(self.pair_finding(
                Code::LBL001,
                pair,
                format!(
                    "no label path: the RGB path has no `{}` folder to swap",
                    self.dataset.labels.from.to_string_lossy()
                ),
            ));
            return (counts, None);
        };
        let text = match read_label(label) {
            Ok(text) => text,
            Err((code, message)) => {
                findings.push(self.label_finding(code, pair, label, None, message));
                return (counts, None);
            }
        };
        let lines = parse_labels(&text);
        if lines.is_empty() {
            findings.push(self.label_finding(
                Code::LBL002,
                pair,
                label,
                None,
                "label file is empty: a background image".into(),
            ));
            return (counts, None);
        }
        let analysis = analyse_rows(
            &lines,
            self.dataset.class_count(),
            rgb.map(|i| (i.width, i.height)),
            self.options.imgsz,
        );
        for (line, code, message) in analysis.issues {
            findings.push(self.label_finding(code, pair, label, Some(line), message));
        }
        for class in analysis.classes {
            *counts.entry(class).or_insert(0) += 1;
        }
        let fix = fixed_text(&text, &lines, &analysis.fixable, &self.options.levels).map(
            |(text, codes)| PendingFix {
                label: label.clone(),
                text,
                codes,
            },
        );
        (counts, fix)
    }

    fn scan_findings(&self, scan: &Scan) -> Vec<Finding> {
        let mut findings = Vec::new();
        for clash in &scan.clashes {
            let names: Vec<String> = clash.files.iter().map(|f| self.rel(f)).collect();
            let mut finding = self.finding(
                Code::PAIR005,
                format!("files share a stem in one folder: {}", names.join(", ")),
            );
            let is_ir = clash.files.first().is_some_and(|f| {
                self.dataset
                    .ir
                    .reversed()
                    .apply(f, &self.dataset.root)
                    .is_some()
            });
            if is_ir {
                finding.ir = names.first().cloned();
                finding.subject = Subject::Ir;
            } else {
                finding.rgb = names.first().cloned();
                finding.subject = Subject::Rgb;
            }
            findings.push(finding);
        }
        for orphan in &scan.orphans {
            let finding = match orphan.kind {
                OrphanKind::Ir => {
                    let mut f = self.finding(
                        Code::PAIR002,
                        format!(
                            "IR image has no RGB partner in {}",
                            self.rel(&orphan.rgb_dir)
                        ),
                    );
                    f.ir = Some(self.rel(&orphan.path));
                    f.subject = Subject::Ir;
                    f
                }
                OrphanKind::Label => {
                    let mut f = self.finding(
                        Code::LBL010,
                        format!("label file has no image in {}", self.rel(&orphan.rgb_dir)),
                    );
                    f.label = Some(self.rel(&orphan.path));
                    f.subject = Subject::Label;
                    f
                }
            };
            findings.push(finding);
        }
        for missing in &scan.missing {
            let mut finding = self.finding(
                Code::DS004,
                format!(
                    "{} line {} lists {}, which does not exist",
                    self.rel(&missing.list),
                    missing.line,
                    self.rel(&missing.image)
                ),
            );
            finding.rgb = Some(self.rel(&missing.image));
            finding.line = Some(missing.line);
            finding.subject = Subject::Rgb;
            findings.push(finding);
        }
        findings
    }

    /// IR images with more than 8 bits per sample (IMG008): one finding for the dataset,
    /// naming the normalisation the caches will use.
    fn deep_ir(&self, pairs: &[PairRecord], outcomes: &[PairOutcome]) -> Vec<Finding> {
        let deep: Vec<(&Path, u8)> = pairs
            .iter()
            .zip(outcomes)
            .filter_map(|(pair, outcome)| Some((pair.ir.path()?, outcome.ir_bits?)))
            .filter(|(_, bits)| *bits > 8)
            .collect();
        let Some(&(first, bits)) = deep.first() else {
            return Vec::new();
        };
        let probed = outcomes.iter().filter(|o| o.ir_bits.is_some()).count();
        let norm = self.ir_norm();
        vec![self.finding(
            Code::IMG008,
            format!(
                "{} of {probed} IR images have {bits}-bit samples (first: {}); ir_norm {norm} maps them to 8 bits: {} (set `ir_norm:` in the data yaml or --ir-norm)",
                deep.len(),
                self.rel(first),
                // Floating-point samples are read as 16-bit ones.
                norm.describe(bits.min(16))
            ),
        )]
    }

    fn split_names(&self, splits: &[usize]) -> String {
        let names: Vec<&str> = splits
            .iter()
            .map(|&i| self.dataset.splits[i].name.as_str())
            .collect();
        names.join(" and ")
    }

    fn duplicate_pairs(&self, pairs: &[PairRecord], outcomes: &[PairOutcome]) -> Vec<Finding> {
        let mut first: HashMap<(u64, u64), usize> = HashMap::new();
        let mut findings = Vec::new();
        for (index, outcome) in outcomes.iter().enumerate() {
            let Some(key) = outcome.content else { continue };
            match first.get(&key) {
                None => {
                    first.insert(key, index);
                }
                Some(&original) => {
                    let (pair, orig) = (&pairs[index], &pairs[original]);
                    let leak = if pair.splits != orig.splits {
                        format!(
                            " (a leak: {} vs {})",
                            self.split_names(&pair.splits),
                            self.split_names(&orig.splits)
                        )
                    } else {
                        String::new()
                    };
                    findings.push(self.pair_finding(
                        Code::IMG007,
                        pair,
                        format!("same RGB and IR content as {}{leak}", self.rel(&orig.rgb)),
                    ));
                }
            }
        }
        findings
    }

    fn split_overlaps(&self, pairs: &[PairRecord]) -> Vec<Finding> {
        let splits = &self.dataset.splits;
        let mut findings = Vec::new();
        for a in 0..splits.len() {
            for b in a + 1..splits.len() {
                let in_a = pairs.iter().filter(|p| p.splits.contains(&a)).count();
                let in_b = pairs.iter().filter(|p| p.splits.contains(&b)).count();
                let both: Vec<&PairRecord> = pairs
                    .iter()
                    .filter(|p| p.splits.contains(&a) && p.splits.contains(&b))
                    .collect();
                if both.is_empty() {
                    continue;
                }
                if both.len() == in_a && both.len() == in_b {
                    findings.push(self.finding(
                        Code::DS002,
                        format!(
                            "{} is the same set as {} ({} pairs): metrics on it measure memorisation; run `fusekit split`",
                            splits[b].name, splits[a].name, both.len()
                        ),
                    ));
                    continue;
                }
                for pair in both {
                    findings.push(self.pair_finding(
                        Code::DS002,
                        pair,
                        format!("pair is in both {} and {}", splits[a].name, splits[b].name),
                    ));
                }
            }
        }
        findings
    }

    fn class_usage(&self, outcomes: &[PairOutcome]) -> Vec<Finding> {
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for outcome in outcomes {
            for (&class, &n) in &outcome.class_counts {
                *counts.entry(class).or_insert(0) += n;
            }
        }
        let names = &self.dataset.names;
        let name = |class: u32| {
            names
                .get(class as usize)
                .cloned()
                .unwrap_or_else(|| format!("class{class}"))
        };
        let mut findings = Vec::new();
        for (class, class_name) in names.iter().enumerate() {
            if !counts.contains_key(&(class as u32)) {
                findings.push(self.finding(
                    Code::DS003,
                    format!("class {class} `{class_name}` in `names` is never used"),
                ));
            }
        }
        let most = counts.iter().max_by_key(|(_, n)| **n);
        let least = counts.iter().min_by_key(|(_, n)| **n);
        if let (Some((&top, &top_n)), Some((&low, &low_n))) = (most, least)
            && top_n as f64 / low_n as f64 > IMBALANCE_RATIO
        {
            findings.push(self.finding(
                Code::DS003,
                format!(
                    "class imbalance {:.0}:1: `{}` has {top_n} boxes, `{}` has {low_n}",
                    top_n as f64 / low_n as f64,
                    name(top),
                    name(low)
                ),
            ));
        }
        findings
    }
}

/// One shift shared by most pairs of a dataset (DS005).
struct SharedOffset {
    /// The median shift of the measured pairs.
    offset: Offset,
    /// How far from it a pair's shift may be and still share it.
    tolerance: f32,
    /// Measured pairs that share it.
    pairs: usize,
}

impl SharedOffset {
    fn covers(&self, offset: Offset) -> bool {
        Offset {
            dx: offset.dx - self.offset.dx,
            dy: offset.dy - self.offset.dy,
        }
        .length()
            <= self.tolerance
    }
}

/// The shift most pairs share, when there is one beyond `max_offset`: the median shift
/// (per axis) of the measured pairs, when it exceeds the median `max_offset` in pixels and at
/// least half of the measured pairs (two at least) are within [`SHARED_OFFSET_TOLERANCE`]
/// pixels (or half of `max_offset`, when more) of it.
fn shared_offset(measured: &[Registration]) -> Option<SharedOffset> {
    let median = |value: fn(&Registration) -> f32| {
        let mut values: Vec<f32> = measured.iter().map(value).collect();
        values.sort_by(f32::total_cmp);
        values.get(values.len() / 2).copied()
    };
    let offset = Offset {
        dx: median(|r| r.offset.dx)?,
        dy: median(|r| r.offset.dy)?,
    };
    let limit = median(|r| r.limit)?;
    if offset.length() <= limit {
        return None;
    }
    let mut shared = SharedOffset {
        offset,
        tolerance: SHARED_OFFSET_TOLERANCE.max(limit / 2.0),
        pairs: 0,
    };
    shared.pairs = measured.iter().filter(|r| shared.covers(r.offset)).count();
    (shared.pairs >= 2 && 2 * shared.pairs >= measured.len()).then_some(shared)
}

/// A label file's text, or the finding that it has none (LBL001) or is unreadable (LBL013).
fn read_label(path: &Path) -> Result<String, (Code, String)> {
    match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err((Code::LBL001, "no label file: a background image".into()))
        }
        Err(e) => Err((Code::LBL013, format!("cannot read label file: {e}"))),
        Ok(bytes) => String::from_utf8(bytes)
            .map_err(|e| (Code::LBL013, format!("label file is not UTF-8 text: {e}"))),
    }
}

/// What the row checks found in one label file.
struct RowAnalysis {
    issues: Vec<(usize, Code, String)>,
    classes: Vec<u32>,
    fixable: Vec<(usize, Code)>,
}

fn analyse_rows(
    lines: &[LabelLine<'_>],
    nc: Option<usize>,
    size: Option<(u32, u32)>,
    imgsz: u32,
) -> RowAnalysis {
    let mut analysis = RowAnalysis {
        issues: Vec::new(),
        classes: Vec::new(),
        fixable: Vec::new(),
    };
    let mut seen: HashMap<Vec<u64>, usize> = HashMap::new();
    for entry in lines {
        let line = entry.line;
        let row = match &entry.row {
            Err(RowError::Columns(n)) => {
                analysis.issues.push((
                    line,
                    Code::LBL003,
                    format!("{n} columns; a box row has 5 (class x y w h)"),
                ));
                continue;
            }
            Err(RowError::NotFinite { column, value }) => {
                analysis.issues.push((
                    line,
                    Code::LBL004,
                    format!("column {column} is `{value}`, not a finite number"),
                ));
                continue;
            }
            Err(RowError::Class { value }) => {
                analysis.issues.push((
                    line,
                    Code::LBL005,
                    format!("class id `{value}` is negative or not an integer"),
                ));
                continue;
            }
            Ok(row) => row,
        };
        let class = row.class();
        let class_ok = match nc {
            Some(nc) if class as usize >= nc => {
                analysis
                    .issues
                    .push((line, Code::LBL005, format!("class id {class} >= nc {nc}")));
                false
            }
            _ => true,
        };
        let out_of_range = row
            .coordinates()
            .into_iter()
            .find(|v| *v < -COORDINATE_TOLERANCE || *v > 1.0 + COORDINATE_TOLERANCE);
        if let Some(v) = out_of_range {
            analysis.issues.push((
                line,
                Code::LBL006,
                format!("coordinate {v} is outside [0, 1]"),
            ));
        }
        let mut sound = class_ok && out_of_range.is_none();
        match row {
            RowKind::Polygon { points, .. } => {
                analysis.issues.push((
                    line,
                    Code::LBL012,
                    format!(
                        "polygon of {} points; --fix converts it to its box",
                        points.len()
                    ),
                ));
                if out_of_range.is_none() {
                    analysis.fixable.push((line, Code::LBL012));
                }
            }
            RowKind::Box(b) => {
                if b.w <= 0.0 || b.h <= 0.0 {
                    analysis.issues.push((
                        line,
                        Code::LBL008,
                        format!("width {} / height {}: a box needs both > 0", b.w, b.h),
                    ));
                    sound = false;
                } else if out_of_range.is_none() && exceeds_image(b) {
                    analysis.issues.push((
                        line,
                        Code::LBL007,
                        "box extends past the image edge; --fix clips it".into(),
                    ));
                    analysis.fixable.push((line, Code::LBL007));
                }
            }
        }
        if sound {
            analysis.classes.push(class);
            let b = row.bounding_box();
            if let Some((width, height)) = size {
                let scale = f64::from(imgsz) / f64::from(width.max(height));
                let (w_px, h_px) = (
                    b.w * f64::from(width) * scale,
                    b.h * f64::from(height) * scale,
                );
                if b.w > 0.0 && b.h > 0.0 && w_px.min(h_px) < MIN_BOX_PIXELS {
                    analysis.issues.push((
                        line,
                        Code::LBL011,
                        format!("box is {w_px:.1}x{h_px:.1} px at imgsz {imgsz}"),
                    ));
                }
            }
        }
        let key: Vec<u64> = std::iter::once(f64::from(class))
            .chain(row.coordinates())
            .map(f64::to_bits)
            .collect();
        if let Some(first) = seen.get(&key) {
            analysis
                .issues
                .push((line, Code::LBL009, format!("duplicate of line {first}")));
            analysis.fixable.push((line, Code::LBL009));
        } else {
            seen.insert(key, line);
        }
    }
    analysis
}

fn format_name(format: fusekit_dataset::ImageFormat) -> &'static str {
    format
        .extensions_str()
        .first()
        .map_or("image", |ext| match *ext {
            "jpg" => "JPEG",
            "png" => "PNG",
            "bmp" => "BMP",
            "tif" | "tiff" => "TIFF",
            "webp" => "WebP",
            _ => "image",
        })
}

fn exceeds_image(b: &fusekit_dataset::BoxRow) -> bool {
    b.edges()
        .iter()
        .any(|v| !(-EDGE_EPSILON..=1.0 + EDGE_EPSILON).contains(v))
}

/// The label text with the enabled safe fixes applied, and the codes fixed; `None` when
/// nothing changes. Lines that are not fixed are kept byte for byte.
fn fixed_text(
    text: &str,
    lines: &[LabelLine<'_>],
    fixable: &[(usize, Code)],
    levels: &crate::settings::Levels,
) -> Option<(String, Vec<Code>)> {
    let wanted: Vec<(usize, Code)> = fixable
        .iter()
        .copied()
        .filter(|(_, code)| levels.enabled(*code))
        .collect();
    if wanted.is_empty() {
        return None;
    }
    let rows: HashMap<usize, &LabelLine<'_>> = lines.iter().map(|l| (l.line, l)).collect();
    let has = |line: usize, code: Code| wanted.contains(&(line, code));
    let mut out = String::with_capacity(text.len());
    for (i, original) in text.lines().enumerate() {
        let line = i + 1;
        if has(line, Code::LBL009) {
            continue;
        }
        let replacement = match rows.get(&line).map(|l| &l.row) {
            Some(Ok(row @ RowKind::Polygon { .. })) if has(line, Code::LBL012) => {
                Some(row.bounding_box().to_line())
            }
            Some(Ok(RowKind::Box(b))) if has(line, Code::LBL007) => Some(b.clipped().to_line()),
            _ => None,
        };
        out.push_str(replacement.as_deref().unwrap_or(original));
        out.push('\n');
    }
    let mut codes: Vec<Code> = wanted.iter().map(|(_, c)| *c).collect();
    codes.sort();
    codes.dedup();
    Some((out, codes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Level, Levels};

    fn codes(text: &str, nc: Option<usize>) -> Vec<(usize, Code)> {
        let lines = parse_labels(text);
        analyse_rows(&lines, nc, Some((1280, 1024)), 640)
            .issues
            .into_iter()
            .map(|(l, c, _)| (l, c))
            .collect()
    }

    #[test]
    fn row_rules() {
        assert_eq!(codes("0 0.5 0.5 0.1 0.1\n", Some(1)), vec![]);
        assert_eq!(
            codes("1 0.5 0.5 0.1 0.1\n", Some(1)),
            vec![(1, Code::LBL005)]
        );
        assert_eq!(
            codes("0 1.2 0.5 0.1 0.1\n", Some(1)),
            vec![(1, Code::LBL006)]
        );
        assert_eq!(
            codes("0 1.005 0.5 0.1 0.1\n", Some(1)),
            vec![(1, Code::LBL007)]
        );
        assert_eq!(codes("0 0.5 0.5 0 0.1\n", Some(1)), vec![(1, Code::LBL008)]);
        assert_eq!(
            codes("0 0.5 0.5 0.001 0.1\n", Some(1)),
            vec![(1, Code::LBL011)]
        );
        assert_eq!(
            codes("0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1 0.1\n", None),
            vec![(2, Code::LBL009)]
        );
        assert_eq!(
            codes("0 0.1 0.1 0.2 0.1 0.2 0.3\n", Some(1)),
            vec![(1, Code::LBL012)]
        );
    }

    #[test]
    fn fixes_keep_other_lines_and_are_idempotent() {
        let text = "0 0.5 0.5 0.1 0.1\n0 0.98 0.5 0.1 0.2\n0 0.5 0.5 0.1 0.1\nbad row\n0 0.1 0.1 0.3 0.1 0.2 0.4\n";
        let lines = parse_labels(text);
        let analysis = analyse_rows(&lines, Some(1), None, 640);
        let (fixed, codes) =
            fixed_text(text, &lines, &analysis.fixable, &Levels::default()).unwrap();
        assert_eq!(codes, vec![Code::LBL007, Code::LBL009, Code::LBL012]);
        assert_eq!(
            fixed,
            "0 0.5 0.5 0.1 0.1\n0 0.965000 0.500000 0.070000 0.200000\nbad row\n0 0.200000 0.250000 0.200000 0.300000\n"
        );
        let again = parse_labels(&fixed);
        let second = analyse_rows(&again, Some(1), None, 640);
        assert!(second.fixable.is_empty(), "{:?}", second.issues);
        let mut levels = Levels::default();
        levels.set("LBL009", Level::Allow).unwrap();
        let (kept, _) = fixed_text(text, &lines, &analysis.fixable, &levels).unwrap();
        assert_eq!(kept.lines().count(), 5);
    }
}
