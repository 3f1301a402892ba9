//! Reading one Pascal VOC annotation file and turning its boxes into YOLO rows.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Annotation files larger than this are refused unread (a VOC file is a few KiB).
const MAX_ANNOTATION_BYTES: u64 = 16 << 20;

/// Why an annotation file could not be used at all; its pair is skipped and reported.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnnotationError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// The file is implausibly large for a VOC annotation.
    #[error("{0} bytes is too large for a VOC annotation (limit {MAX_ANNOTATION_BYTES})")]
    TooLarge(u64),
    /// The text is not well-formed XML.
    #[error("invalid XML: {0}")]
    Xml(#[from] roxmltree::Error),
    /// Well-formed XML whose root element is not `<annotation>`.
    #[error("root element is <{0}>, expected <annotation>")]
    NotVoc(String),
    /// No usable `<size>` and the image header could not be read either.
    #[error("no <size> in the annotation and the image header of {image} cannot be read: {cause}")]
    NoSize {
        /// The image whose header was tried.
        image: PathBuf,
        /// The decoder's message.
        cause: String,
    },
}

impl AnnotationError {
    /// The 1-based line the error points at, when it points at one.
    pub(crate) fn line(&self) -> Option<u32> {
        match self {
            AnnotationError::Xml(e) => Some(e.pos().row),
            _ => None,
        }
    }
}

/// What is wrong with an object that is left out of the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// `<name>`, `<bndbox>` or one of its coordinates is missing, or the name is empty.
    MissingField,
    /// A coordinate is not a finite number.
    NotANumber,
    /// `xmin >= xmax` or `ymin >= ymax`.
    Inverted,
    /// The box lies more than one pixel outside the image, or nothing of it is left inside.
    OutsideImage,
    /// The class is not in the names given with `--names`.
    UnknownClass,
}

/// Why an object is malformed: its kind and a message.
pub(crate) type Problem = (MalformedKind, String);

/// A box as written in the XML, in pixels (edges, not 1-based pixel indices), checked for
/// presence, numbers and order but not yet against the image size.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VocBox {
    pub name: String,
    pub xmin: f64,
    pub ymin: f64,
    pub xmax: f64,
    pub ymax: f64,
}

/// One `<object>` of a file: its 1-based index and line, and the box or why there is none.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VocObject {
    pub index: usize,
    pub line: u32,
    pub parsed: Result<VocBox, Problem>,
}

/// A parsed annotation file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VocFile {
    /// `<size><width>/<height>` when both are positive integers.
    pub size: Option<(u32, u32)>,
    pub objects: Vec<VocObject>,
}

/// Reads and parses an annotation file.
pub(crate) fn read_voc(path: &Path) -> Result<VocFile, AnnotationError> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_ANNOTATION_BYTES {
        return Err(AnnotationError::TooLarge(len));
    }
    parse_voc(&std::fs::read_to_string(path)?)
}

/// Parses the text of an annotation file. Only direct `<object>` children of `<annotation>`
/// count (VOC `<part>`s inside an object are ignored), matched by local name.
pub(crate) fn parse_voc(text: &str) -> Result<VocFile, AnnotationError> {
    let doc = roxmltree::Document::parse(text)?;
    let root = doc.root_element();
    if root.tag_name().name() != "annotation" {
        return Err(AnnotationError::NotVoc(root.tag_name().name().to_owned()));
    }
    let size = child(root, "size").and_then(|size| {
        let width = child(size, "width").and_then(|n| dimension(text_of(n)))?;
        let height = child(size, "height").and_then(|n| dimension(text_of(n)))?;
        Some((width, height))
    });
    let objects = root
        .children()
        .filter(|n| n.is_element() && n.tag_name().name() == "object")
        .enumerate()
        .map(|(i, node)| VocObject {
            index: i + 1,
            line: doc.text_pos_at(node.range().start).row,
            parsed: parse_object(node),
        })
        .collect();
    Ok(VocFile { size, objects })
}

fn child<'a, 'input>(
    node: roxmltree::Node<'a, 'input>,
    name: &str,
) -> Option<roxmltree::Node<'a, 'input>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
}

fn text_of<'a>(node: roxmltree::Node<'a, '_>) -> &'a str {
    node.text().unwrap_or("").trim()
}

/// A positive whole number of pixels (`1280` or `1280.0`); anything else means "unknown".
fn dimension(text: &str) -> Option<u32> {
    let value: f64 = text.parse().ok()?;
    (value >= 1.0 && value.fract() == 0.0 && value <= f64::from(u32::MAX)).then_some(value as u32)
}

fn parse_object(node: roxmltree::Node) -> Result<VocBox, Problem> {
    let missing = |what: &str| (MalformedKind::MissingField, format!("missing {what}"));
    let name = child(node, "name").ok_or_else(|| missing("<name>"))?;
    let name = text_of(name);
    if name.is_empty() {
        return Err((MalformedKind::MissingField, "empty <name>".to_owned()));
    }
    let bndbox = child(node, "bndbox").ok_or_else(|| missing("<bndbox>"))?;
    let mut coords = [0.0; 4];
    for (value, tag) in coords.iter_mut().zip(["xmin", "ymin", "xmax", "ymax"]) {
        let text = text_of(child(bndbox, tag).ok_or_else(|| missing(&format!("<{tag}>")))?);
        *value = text
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| {
                (
                    MalformedKind::NotANumber,
                    format!("<{tag}> `{text}` is not a number"),
                )
            })?;
    }
    let [xmin, ymin, xmax, ymax] = coords;
    if xmin >= xmax {
        return Err((
            MalformedKind::Inverted,
            format!("xmin {xmin} >= xmax {xmax}"),
        ));
    }
    if ymin >= ymax {
        return Err((
            MalformedKind::Inverted,
            format!("ymin {ymin} >= ymax {ymax}"),
        ));
    }
    Ok(VocBox {
        name: name.to_owned(),
        xmin,
        ymin,
        xmax,
        ymax,
    })
}

/// A box in YOLO form: centre and size normalised by the image size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct YoloBox {
    pub cx: f64,
    pub cy: f64,
    pub w: f64,
    pub h: f64,
}

/// Normalises `b` by a `width x height` image. Boxes at most one pixel outside are clipped
/// (`Ok((box, true))`); farther out, or empty once clipped, they are malformed.
pub(crate) fn to_yolo(b: &VocBox, width: u32, height: u32) -> Result<(YoloBox, bool), Problem> {
    let (w, h) = (f64::from(width), f64::from(height));
    let outside = |reason: String| (MalformedKind::OutsideImage, reason);
    if b.xmin < -1.0 || b.ymin < -1.0 || b.xmax > w + 1.0 || b.ymax > h + 1.0 {
        return Err(outside(format!(
            "box ({}, {}, {}, {}) lies more than 1 px outside the {width}x{height} image",
            b.xmin, b.ymin, b.xmax, b.ymax
        )));
    }
    let (x0, y0) = (b.xmin.max(0.0), b.ymin.max(0.0));
    let (x1, y1) = (b.xmax.min(w), b.ymax.min(h));
    if x0 >= x1 || y0 >= y1 {
        return Err(outside(format!(
            "box ({}, {}, {}, {}) has no area inside the {width}x{height} image",
            b.xmin, b.ymin, b.xmax, b.ymax
        )));
    }
    let clipped = (x0, y0, x1, y1) != (b.xmin, b.ymin, b.xmax, b.ymax);
    let yolo = YoloBox {
        cx: (x0 + x1) / 2.0 / w,
        cy: (y0 + y1) / 2.0 / h,
        w: (x1 - x0) / w,
        h: (y1 - y0) / h,
    };
    Ok((yolo, clipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(bndbox: &str) -> String {
        format!(
            "<annotation><size><width>100</width><height>50</height></size>\
             <object><name>person</name><bndbox>{bndbox}</bndbox></object></annotation>"
        )
    }

    fn first(text: &str) -> Result<VocBox, Problem> {
        parse_voc(text).unwrap().objects.remove(0).parsed
    }

    #[test]
    fn reads_size_objects_and_lines() {
        let text = "<?xml version=\"1.0\"?>\n<annotation>\n <size><width>100</width><height>50.0</height><depth>3</depth></size>\n <object>\n  <name> person </name>\n  <part><name>head</name></part>\n  <bndbox><xmin>10</xmin><ymin>5.5</ymin><xmax>20</xmax><ymax>25</ymax></bndbox>\n </object>\n</annotation>\n";
        let file = parse_voc(text).unwrap();
        assert_eq!(file.size, Some((100, 50)));
        assert_eq!(file.objects.len(), 1);
        assert_eq!(file.objects[0].index, 1);
        assert_eq!(file.objects[0].line, 4);
        let b = file.objects[0].parsed.clone().unwrap();
        assert_eq!(b.name, "person");
        assert_eq!((b.xmin, b.ymin, b.xmax, b.ymax), (10.0, 5.5, 20.0, 25.0));
    }

    #[test]
    fn missing_or_zero_size_is_unknown() {
        for size in [
            "",
            "<size><width>0</width><height>0</height></size>",
            "<size><width>abc</width><height>10</height></size>",
            "<size><width>10.5</width><height>10</height></size>",
        ] {
            let file = parse_voc(&format!("<annotation>{size}</annotation>")).unwrap();
            assert_eq!(file.size, None, "{size}");
        }
    }

    #[test]
    fn malformed_objects_say_why() {
        let cases = [
            (
                "<xmin>1</xmin><ymin>1</ymin><xmax>2</xmax>",
                "missing <ymax>",
            ),
            (
                "<xmin>a</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax>",
                "<xmin> `a` is not a number",
            ),
            (
                "<xmin>NaN</xmin><ymin>1</ymin><xmax>2</xmax><ymax>3</ymax>",
                "<xmin> `NaN` is not a number",
            ),
            (
                "<xmin>5</xmin><ymin>1</ymin><xmax>5</xmax><ymax>3</ymax>",
                "xmin 5 >= xmax 5",
            ),
            (
                "<xmin>1</xmin><ymin>9</ymin><xmax>5</xmax><ymax>3</ymax>",
                "ymin 9 >= ymax 3",
            ),
        ];
        for (bndbox, reason) in cases {
            assert_eq!(first(&object(bndbox)).unwrap_err().1, reason);
        }
        let no_box = "<annotation><object><name>a</name></object></annotation>";
        assert_eq!(
            first(no_box).unwrap_err(),
            (MalformedKind::MissingField, "missing <bndbox>".to_owned())
        );
        let no_name = "<annotation><object><name> </name></object></annotation>";
        assert_eq!(first(no_name).unwrap_err().1, "empty <name>");
    }

    #[test]
    fn bad_xml_and_wrong_root_are_errors_with_lines() {
        let err = parse_voc("<annotation>\n<object>\n</annotation>").unwrap_err();
        assert!(matches!(err, AnnotationError::Xml(_)), "{err}");
        assert_eq!(err.line(), Some(3));
        let err = parse_voc("<svg/>").unwrap_err();
        assert_eq!(
            err.to_string(),
            "root element is <svg>, expected <annotation>"
        );
        let dtd = "<!DOCTYPE a [<!ENTITY x \"y\">]><annotation>&x;</annotation>";
        assert!(parse_voc(dtd).is_err());
    }

    #[test]
    fn normalises_clips_and_refuses_far_outside() {
        let b = |xmin, ymin, xmax, ymax| VocBox {
            name: "a".into(),
            xmin,
            ymin,
            xmax,
            ymax,
        };
        let (y, clipped) = to_yolo(&b(10.0, 10.0, 30.0, 20.0), 40, 40).unwrap();
        assert!(!clipped);
        assert_eq!((y.cx, y.cy, y.w, y.h), (0.5, 0.375, 0.5, 0.25));
        let (y, clipped) = to_yolo(&b(-1.0, 0.0, 41.0, 40.0), 40, 40).unwrap();
        assert!(clipped);
        assert_eq!((y.cx, y.cy, y.w, y.h), (0.5, 0.5, 1.0, 1.0));
        let err = to_yolo(&b(0.0, 0.0, 41.5, 10.0), 40, 40).unwrap_err();
        assert_eq!(err.0, MalformedKind::OutsideImage);
        let err = to_yolo(&b(40.0, 0.0, 41.0, 10.0), 40, 40).unwrap_err();
        assert!(err.1.contains("no area inside"), "{}", err.1);
    }
}
