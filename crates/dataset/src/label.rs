//! YOLO txt labels: `class x_center y_center width height`, normalised to [0, 1].

/// A box row, in normalised coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxRow {
    /// Class id (a non-negative integer; the upper bound is the dataset's `nc`).
    pub class: u32,
    /// Centre x.
    pub x: f64,
    /// Centre y.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl BoxRow {
    /// Edges as (left, top, right, bottom).
    pub fn edges(&self) -> [f64; 4] {
        [
            self.x - self.w / 2.0,
            self.y - self.h / 2.0,
            self.x + self.w / 2.0,
            self.y + self.h / 2.0,
        ]
    }

    /// A box from edges.
    pub fn from_edges(class: u32, [x0, y0, x1, y1]: [f64; 4]) -> Self {
        Self {
            class,
            x: (x0 + x1) / 2.0,
            y: (y0 + y1) / 2.0,
            w: x1 - x0,
            h: y1 - y0,
        }
    }

    /// The box clipped to the unit square.
    pub fn clipped(&self) -> Self {
        Self::from_edges(self.class, self.edges().map(|v| v.clamp(0.0, 1.0)))
    }

    /// Whether any edge lies outside the unit square.
    pub fn exceeds_image(&self) -> bool {
        self.edges().iter().any(|&v| !(0.0..=1.0).contains(&v))
    }

    /// The row in YOLO txt form, six decimals.
    pub fn to_line(&self) -> String {
        format!(
            "{} {:.6} {:.6} {:.6} {:.6}",
            self.class, self.x, self.y, self.w, self.h
        )
    }
}

/// What a non-blank label row holds.
#[derive(Debug, Clone, PartialEq)]
pub enum RowKind {
    /// `class x y w h`.
    Box(BoxRow),
    /// `class x1 y1 x2 y2 ...` with at least three points: a segmentation polygon.
    Polygon {
        /// Class id.
        class: u32,
        /// The polygon's points, normalised.
        points: Vec<[f64; 2]>,
    },
}

impl RowKind {
    /// The row's class id.
    pub fn class(&self) -> u32 {
        match self {
            RowKind::Box(b) => b.class,
            RowKind::Polygon { class, .. } => *class,
        }
    }

    /// The row's box (for a polygon: its bounding box, clipped to the image).
    pub fn bounding_box(&self) -> BoxRow {
        match self {
            RowKind::Box(b) => *b,
            RowKind::Polygon { class, points } => {
                let fold = |f: fn(f64, f64) -> f64, init: f64, axis: usize| {
                    points.iter().map(|p| p[axis]).fold(init, f)
                };
                let edges = [
                    fold(f64::min, f64::INFINITY, 0),
                    fold(f64::min, f64::INFINITY, 1),
                    fold(f64::max, f64::NEG_INFINITY, 0),
                    fold(f64::max, f64::NEG_INFINITY, 1),
                ];
                BoxRow::from_edges(*class, edges.map(|v| v.clamp(0.0, 1.0)))
            }
        }
    }

    /// The coordinate values of the row (not the class).
    pub fn coordinates(&self) -> Vec<f64> {
        match self {
            RowKind::Box(b) => vec![b.x, b.y, b.w, b.h],
            RowKind::Polygon { points, .. } => points.iter().flatten().copied().collect(),
        }
    }
}

/// Why a row could not be read.
#[derive(Debug, Clone, PartialEq)]
pub enum RowError {
    /// Not 5 columns and not a polygon (an odd count of at least 7).
    Columns(usize),
    /// A value is not a finite number (1-based column).
    NotFinite {
        /// 1-based column.
        column: usize,
        /// The text found there.
        value: String,
    },
    /// The class id is negative or not an integer.
    Class {
        /// The text found there.
        value: String,
    },
}

/// One non-blank line of a label file.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelLine<'a> {
    /// 1-based line number.
    pub line: usize,
    /// The line as written (without the line break).
    pub text: &'a str,
    /// The parsed row or why it failed.
    pub row: Result<RowKind, RowError>,
}

/// Parses every non-blank line of a label file.
pub fn parse_labels(text: &str) -> Vec<LabelLine<'_>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| LabelLine {
            line: i + 1,
            text: line,
            row: parse_row(line),
        })
        .collect()
}

fn parse_row(line: &str) -> Result<RowKind, RowError> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let n = fields.len();
    if n != 5 && (n < 7 || n.is_multiple_of(2)) {
        return Err(RowError::Columns(n));
    }
    let mut values = Vec::with_capacity(n);
    for (i, field) in fields.iter().enumerate() {
        match field.parse::<f64>() {
            Ok(v) if v.is_finite() => values.push(v),
            _ => {
                return Err(RowError::NotFinite {
                    column: i + 1,
                    value: (*field).to_owned(),
                });
            }
        }
    }
    let class = values[0];
    if class < 0.0 || class.fract() != 0.0 || class > u32::MAX as f64 {
        return Err(RowError::Class {
            value: fields[0].to_owned(),
        });
    }
    let class = class as u32;
    if n == 5 {
        return Ok(RowKind::Box(BoxRow {
            class,
            x: values[1],
            y: values[2],
            w: values[3],
            h: values[4],
        }));
    }
    let points = values[1..].chunks_exact(2).map(|p| [p[0], p[1]]).collect();
    Ok(RowKind::Polygon { class, points })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boxes_polygons_and_errors_with_line_numbers() {
        let text = "0 0.5 0.5 0.2 0.4\n\n1 0.1 0.1 0.3 0.1 0.2 0.4\n0 0.5 0.5\n0 nan 0.5 0.1 0.1\n-1 0.5 0.5 0.1 0.1\n1.5 0.5 0.5 0.1 0.1\n2.0 0.5 0.5 0.1 0.1\n";
        let lines = parse_labels(text);
        assert_eq!(lines.len(), 7);
        assert!(matches!(lines[0].row, Ok(RowKind::Box(_))));
        assert_eq!(lines[1].line, 3);
        let Ok(RowKind::Polygon {
            class: 1,
            ref points,
        }) = lines[1].row
        else {
            panic!()
        };
        assert_eq!(points.len(), 3);
        assert_eq!(lines[2].row, Err(RowError::Columns(3)));
        assert_eq!(
            lines[3].row,
            Err(RowError::NotFinite {
                column: 2,
                value: "nan".into()
            })
        );
        assert!(matches!(lines[4].row, Err(RowError::Class { .. })));
        assert!(matches!(lines[5].row, Err(RowError::Class { .. })));
        assert_eq!(lines[6].row.as_ref().unwrap().class(), 2);
    }

    #[test]
    fn six_columns_is_not_a_polygon() {
        assert_eq!(
            parse_labels("0 1 2 3 4 5")[0].row,
            Err(RowError::Columns(6))
        );
    }

    #[test]
    fn clipping_and_polygon_boxes() {
        let b = BoxRow {
            class: 0,
            x: 0.98,
            y: 0.5,
            w: 0.1,
            h: 0.2,
        };
        assert!(b.exceeds_image());
        let c = b.clipped();
        assert!(!c.exceeds_image());
        assert!((c.edges()[2] - 1.0).abs() < 1e-12 && (c.edges()[0] - 0.93).abs() < 1e-12);
        let poly = RowKind::Polygon {
            class: 3,
            points: vec![[0.1, 0.2], [0.3, 0.2], [0.2, 0.6]],
        };
        let bb = poly.bounding_box();
        assert_eq!(bb.class, 3);
        assert!((bb.w - 0.2).abs() < 1e-12 && (bb.h - 0.4).abs() < 1e-12);
        assert_eq!(bb.to_line(), "3 0.200000 0.400000 0.200000 0.400000");
    }
}
