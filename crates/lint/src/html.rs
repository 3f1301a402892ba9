//! The HTML report: one self-contained file (inline CSS and script, pictures as data URIs, no
//! network) with the count per code, then every finding, the first of each code with small
//! thumbnails of its RGB and IR images, the label's boxes drawn and the offending row
//! highlighted; filterable by code and severity.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use fusekit_dataset::{IrNorm, normalise_ir, parse_labels};
use image::RgbImage;
use image::codecs::jpeg::JpegEncoder;

use crate::codes::{Code, Severity};
use crate::report::{Finding, Report};

/// Findings of one code shown with thumbnails, by default; the others are listed without.
pub const THUMBNAILS_PER_CODE: usize = 20;
/// Long side of a thumbnail, in pixels.
const THUMBNAIL_SIDE: u32 = 160;
/// JPEG quality of the thumbnails: small files, boxes still clear.
const THUMBNAIL_QUALITY: u8 = 70;
/// The highlighted label row's box: a yellow no class colour uses, drawn wider.
const HIGHLIGHT: [u8; 3] = [255, 221, 0];
/// Label lines shown either side of the offending one.
const CONTEXT_LINES: usize = 3;

/// What the HTML report needs besides the report.
#[derive(Debug, Clone, Copy)]
pub struct HtmlOptions<'a> {
    /// The report's first lines (dataset, config), shown at the top.
    pub header: &'a str,
    /// The dataset root the findings' paths are relative to; `None`: no thumbnails.
    pub root: Option<&'a Path>,
    /// How IR samples become 8 bits in the thumbnails (the dataset's `ir_norm:`).
    pub ir_norm: IrNorm,
    /// Findings per code shown with thumbnails.
    pub thumbnails_per_code: usize,
}

impl Report {
    /// The HTML report: one file with nothing to fetch. Every string from the dataset is
    /// escaped.
    pub fn to_html(&self, options: &HtmlOptions<'_>) -> String {
        let mut groups: BTreeMap<(Severity, Code), Vec<&Finding>> = BTreeMap::new();
        for f in &self.findings {
            groups.entry((f.severity, f.code)).or_default().push(f);
        }
        let mut out = String::new();
        out.push_str(HEAD);
        let _ = writeln!(
            out,
            "<pre class=\"header\">{}</pre>",
            escape(options.header)
        );
        let _ = writeln!(out, "<p class=\"totals\">{}</p>", escape(&self.totals()));
        summary_table(&mut out, &groups);
        filters(&mut out, &groups);
        for ((severity, code), findings) in &groups {
            group(&mut out, (*severity, *code), findings, options);
        }
        out.push_str(TAIL);
        out
    }

    /// `N errors, N warnings, N infos in N pairs`.
    fn totals(&self) -> String {
        let s = &self.summary;
        format!(
            "{} errors, {} warnings, {} infos in {} pairs",
            s.errors, s.warnings, s.infos, s.pairs
        )
    }
}

/// The count per code, as a table.
fn summary_table(out: &mut String, groups: &BTreeMap<(Severity, Code), Vec<&Finding>>) {
    out.push_str(
        "<table class=\"summary\"><tr><th>severity</th><th>code</th><th>findings</th>\
<th>rule</th></tr>\n",
    );
    for ((severity, code), findings) in groups {
        let _ = writeln!(
            out,
            "<tr class=\"{s}\"><td>{s}</td><td><a href=\"#{code}\">{code}</a></td><td>{}</td>\
<td>{}</td></tr>",
            findings.len(),
            escape(code.title()),
            s = severity.as_str(),
        );
    }
    out.push_str("</table>\n");
}

/// Check boxes per severity and per code; the script hides the groups left unchecked.
fn filters(out: &mut String, groups: &BTreeMap<(Severity, Code), Vec<&Finding>>) {
    out.push_str("<fieldset id=\"filters\"><legend>show</legend>\n<div>severity:");
    for severity in [Severity::Error, Severity::Warning, Severity::Info] {
        let _ = write!(
            out,
            " <label><input type=\"checkbox\" class=\"severity\" value=\"{s}\" checked> {s}\
</label>",
            s = severity.as_str()
        );
    }
    out.push_str("</div>\n<div>code:");
    for (_, code) in groups.keys() {
        let _ = write!(
            out,
            " <label><input type=\"checkbox\" class=\"code\" value=\"{code}\" checked> {code}\
</label>"
        );
    }
    out.push_str("</div></fieldset>\n");
}

/// One code's findings, the first `thumbnails_per_code` with thumbnails.
fn group(
    out: &mut String,
    (severity, code): (Severity, Code),
    findings: &[&Finding],
    options: &HtmlOptions<'_>,
) {
    let s = severity.as_str();
    let _ = writeln!(
        out,
        "<section class=\"group {s}\" id=\"{code}\" data-code=\"{code}\" data-severity=\"{s}\">\
<h2>{code} {s}: {} ({})</h2>",
        escape(code.title()),
        findings.len()
    );
    let shown = options.thumbnails_per_code.min(findings.len());
    if options.root.is_some() && shown < findings.len() {
        let _ = writeln!(
            out,
            "<p class=\"capped\">Thumbnails for the first {shown} of {} findings (capped at \
{} per code to keep this file small).</p>",
            findings.len(),
            options.thumbnails_per_code
        );
    }
    for (index, f) in findings.iter().enumerate() {
        finding(
            out,
            f,
            options.root.filter(|_| index < shown),
            options.ir_norm,
        );
    }
    out.push_str("</section>\n");
}

/// One finding: where, what, the label lines around the offending one, and thumbnails when
/// `root` is given.
fn finding(out: &mut String, f: &Finding, root: Option<&Path>, ir_norm: IrNorm) {
    let _ = writeln!(
        out,
        "<article class=\"finding\"><p><code>{}</code>: {}</p>",
        escape(&f.location()),
        escape(&f.message)
    );
    let label_text = root
        .zip(f.label.as_deref())
        .and_then(|(root, label)| std::fs::read_to_string(root.join(label)).ok());
    if let Some(root) = root {
        let mut figures = String::new();
        for (name, path, ir) in [("RGB", &f.rgb, false), ("IR", &f.ir, true)] {
            if let Some(path) = path {
                let norm = ir.then_some(ir_norm);
                figures.push_str(&figure(
                    name,
                    root,
                    path,
                    label_text.as_deref(),
                    f.line,
                    norm,
                ));
            }
        }
        if !figures.is_empty() {
            let _ = writeln!(out, "<div class=\"thumbs\">{figures}</div>");
        }
    }
    if let (Some(text), Some(line)) = (label_text.as_deref(), f.line) {
        label_excerpt(out, text, line);
    }
    out.push_str("</article>\n");
}

/// A thumbnail of `root/path` with its caption, or why there is none.
fn figure(
    name: &str,
    root: &Path,
    path: &str,
    label: Option<&str>,
    line: Option<usize>,
    ir_norm: Option<IrNorm>,
) -> String {
    let picture = match thumbnail(&root.join(path), label, line, ir_norm) {
        Ok(uri) => format!("<img src=\"{uri}\" alt=\"{} image\">", name),
        Err(why) => format!("<div class=\"missing\">cannot show: {}</div>", escape(&why)),
    };
    format!(
        "<figure>{picture}<figcaption>{name}: {}</figcaption></figure>",
        escape(path)
    )
}

/// The image at `path` scaled to [`THUMBNAIL_SIDE`] with the boxes of `label` drawn (row
/// `line` highlighted), as a JPEG data URI; `ir_norm` maps an IR image to 8 bits.
fn thumbnail(
    path: &Path,
    label: Option<&str>,
    line: Option<usize>,
    ir_norm: Option<IrNorm>,
) -> Result<String, String> {
    let mut image = image::open(path).map_err(|e| e.to_string())?;
    if let Some(norm) = ir_norm {
        image = normalise_ir(image, norm);
    }
    let mut picture = image.thumbnail(THUMBNAIL_SIDE, THUMBNAIL_SIDE).into_rgb8();
    if let Some(label) = label {
        draw_label_boxes(&mut picture, label, line);
    }
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, THUMBNAIL_QUALITY)
        .encode_image(&picture)
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(jpeg)
    ))
}

/// Outlines every row of `label` that parses on `picture` in its class colour, row `line`
/// wider and in [`HIGHLIGHT`], drawn last so that it stays visible.
fn draw_label_boxes(picture: &mut RgbImage, label: &str, line: Option<usize>) {
    let (w, h) = (picture.width() as f64, picture.height() as f64);
    let mut rows: Vec<(bool, u32, [f32; 4])> = parse_labels(label)
        .into_iter()
        .filter_map(|l| {
            let b = l.row.ok()?.bounding_box();
            let [x0, y0, x1, y1] = b.edges();
            let corners = [x0 * w, y0 * h, x1 * w, y1 * h].map(|v| v as f32);
            Some((Some(l.line) == line, b.class, corners))
        })
        .collect();
    rows.sort_by_key(|&(highlighted, ..)| highlighted);
    for (highlighted, class, corners) in rows {
        let (colour, width) = if highlighted {
            (HIGHLIGHT, 2)
        } else {
            (fusekit_plots::class_rgb(class), 1)
        };
        fusekit_plots::draw_outline(picture, corners, colour, width);
    }
}

/// The label lines around `line` (1-based), that one marked.
fn label_excerpt(out: &mut String, text: &str, line: usize) {
    let lines: Vec<&str> = text.lines().collect();
    if line == 0 || line > lines.len() {
        return;
    }
    let first = line.saturating_sub(CONTEXT_LINES).max(1);
    let last = (line + CONTEXT_LINES).min(lines.len());
    out.push_str("<pre class=\"label\">");
    for number in first..=last {
        let text = escape(lines[number - 1]);
        if number == line {
            let _ = writeln!(out, "<mark>{number:>4}  {text}</mark>");
        } else {
            let _ = writeln!(out, "{number:>4}  {text}");
        }
    }
    out.push_str("</pre>\n");
}

/// `text` safe inside HTML text and double- or single-quoted attributes.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Document start and the inline style.
const HEAD: &str = r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fusekit lint report</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
pre { background: #f4f4f4; padding: .4em; overflow-x: auto; }
table.summary { border-collapse: collapse; } table.summary td, table.summary th { border: 1px solid #ccc; padding: .2em .6em; text-align: left; }
tr.error td:first-child, section.error h2 { color: #b00020; }
tr.warning td:first-child, section.warning h2 { color: #a05a00; }
tr.info td:first-child, section.info h2 { color: #1f5fa0; }
fieldset { margin: 1em 0; } fieldset div { margin: .2em 0; } label { margin-right: .8em; white-space: nowrap; }
article.finding { border-top: 1px solid #ddd; padding: .4em 0; }
article.finding p { margin: .2em 0; }
div.thumbs { display: flex; gap: .8em; flex-wrap: wrap; }
figure { margin: 0; } figcaption { font-size: .8em; color: #555; max-width: 20em; word-break: break-all; }
div.missing { width: 160px; height: 90px; background: #fde; font-size: .8em; padding: .3em; overflow: hidden; }
mark { background: #ffdd00; }
p.capped { font-style: italic; color: #555; }
</style></head>
<body><h1>fusekit lint report</h1>
"#;

/// The filter script and document end.
const TAIL: &str = r#"<script>
function applyFilters() {
  const checked = (kind) => new Set(Array.from(document.querySelectorAll('#filters input.' + kind + ':checked'), (e) => e.value));
  const severities = checked('severity'), codes = checked('code');
  for (const group of document.querySelectorAll('section.group')) {
    group.hidden = !(severities.has(group.dataset.severity) && codes.has(group.dataset.code));
  }
}
for (const input of document.querySelectorAll('#filters input')) { input.addEventListener('change', applyFilters); }
</script>
</body></html>
"#;
