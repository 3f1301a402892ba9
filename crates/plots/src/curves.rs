//! `BoxPR_curve.png`, `BoxF1_curve.png`, `BoxP_curve.png`, `BoxR_curve.png`.

use std::path::{Path, PathBuf};

use fusekit_eval::{ClassCurve, Curves};
use plotters::prelude::*;

use crate::canvas::{Canvas, drawing};
use crate::style::{MAIN_BLUE, class_color, text};
use crate::{CURVE_PNGS, PlotError};

/// Size of each curve picture.
const SIZE: (u32, u32) = (1800, 1200);
/// With this many classes or more, classes are drawn grey and unlabelled (the legend would
/// not fit).
const MAX_LABELLED_CLASSES: usize = 21;
/// The all-classes confidence curves are box-filtered over this fraction of their points.
const SMOOTH_FRACTION: f64 = 0.05;
const WHAT: &str = "curves";

/// One of the four pictures.
#[derive(Clone, Copy)]
enum Kind {
    PrecisionRecall,
    F1,
    Precision,
    Recall,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::PrecisionRecall,
        Kind::F1,
        Kind::Precision,
        Kind::Recall,
    ];

    fn axes(self) -> (&'static str, &'static str) {
        match self {
            Kind::PrecisionRecall => ("Recall", "Precision"),
            Kind::F1 => ("Confidence", "F1"),
            Kind::Precision => ("Confidence", "Precision"),
            Kind::Recall => ("Confidence", "Recall"),
        }
    }

    fn values(self, class: &ClassCurve) -> &[f64] {
        match self {
            Kind::PrecisionRecall => &class.pr,
            Kind::F1 => &class.f1,
            Kind::Precision => &class.precision,
            Kind::Recall => &class.recall,
        }
    }
}

/// Writes the four curve pictures of `curves` into `dir` ([`CURVE_PNGS`], returned in that
/// order): each class (with its AP50 on the PR curve) and all classes (the mean; on the PR
/// curve with mAP50, on the confidence curves smoothed, with its maximum and where it is).
/// `names[c]` names class `c`.
///
/// # Errors
///
/// [`PlotError::Input`] when a curve's length differs from `curves.points` or a class has no
/// name; [`PlotError::Io`] when a file cannot be written.
pub fn curves(curves: &Curves, names: &[String], dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    check(curves, names)?;
    Kind::ALL
        .iter()
        .zip(CURVE_PNGS)
        .map(|(&kind, file)| {
            let path = dir.join(file);
            draw(curves, names, kind, &path)?;
            Ok(path)
        })
        .collect()
}

fn check(curves: &Curves, names: &[String]) -> Result<(), PlotError> {
    let n = curves.points.len();
    for class in &curves.classes {
        let lengths = [
            class.pr.len(),
            class.f1.len(),
            class.precision.len(),
            class.recall.len(),
        ];
        if lengths.iter().any(|&l| l != n) {
            return Err(PlotError::Input {
                what: WHAT,
                message: format!(
                    "class {} has curves of {lengths:?} points, not {n}",
                    class.class
                ),
            });
        }
        if names.get(class.class as usize).is_none() {
            return Err(PlotError::Input {
                what: WHAT,
                message: format!("class {} has no name ({} names)", class.class, names.len()),
            });
        }
    }
    Ok(())
}

fn draw(curves: &Curves, names: &[String], kind: Kind, path: &Path) -> Result<(), PlotError> {
    let mut canvas = Canvas::white(SIZE.0, SIZE.1)?;
    {
        let root = canvas.area();
        let (x_desc, y_desc) = kind.axes();
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("{y_desc}-{x_desc} Curve"), text(36.0))
            .margin(30)
            .x_label_area_size(70)
            .y_label_area_size(90)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(drawing(WHAT))?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .x_desc(x_desc)
            .y_desc(y_desc)
            .axis_desc_style(text(28.0))
            .label_style(text(22.0))
            .draw()
            .map_err(drawing(WHAT))?;
        let labelled = curves.classes.len() < MAX_LABELLED_CLASSES;
        for (i, class) in curves.classes.iter().enumerate() {
            let color = if labelled {
                class_color(i + 1)
            } else {
                RGBColor(160, 160, 160)
            };
            let series = chart
                .draw_series(LineSeries::new(
                    curves
                        .points
                        .iter()
                        .copied()
                        .zip(kind.values(class).iter().copied()),
                    color.stroke_width(2),
                ))
                .map_err(drawing(WHAT))?;
            if labelled {
                let name = &names[class.class as usize];
                let label = match kind {
                    Kind::PrecisionRecall => format!("{name} {:.3}", class.ap50),
                    _ => name.clone(),
                };
                series
                    .label(label)
                    .legend(move |(x, y)| legend_line(x, y, color, 2));
            }
        }
        if !curves.classes.is_empty() {
            let (mean, label) = all_classes(curves, kind);
            chart
                .draw_series(LineSeries::new(
                    curves.points.iter().copied().zip(mean),
                    MAIN_BLUE.stroke_width(5),
                ))
                .map_err(drawing(WHAT))?
                .label(label)
                .legend(|(x, y)| legend_line(x, y, MAIN_BLUE, 5));
            chart
                .configure_series_labels()
                .label_font(text(22.0))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(200, 200, 200))
                .position(match kind {
                    Kind::PrecisionRecall | Kind::Recall => SeriesLabelPosition::LowerLeft,
                    Kind::F1 | Kind::Precision => SeriesLabelPosition::LowerRight,
                })
                .draw()
                .map_err(drawing(WHAT))?;
        }
        root.present().map_err(drawing(WHAT))?;
    }
    canvas.save(path)
}

/// The all-classes curve of `kind` and its legend.
fn all_classes(curves: &Curves, kind: Kind) -> (Vec<f64>, String) {
    match kind {
        Kind::PrecisionRecall => {
            let map50 =
                curves.classes.iter().map(|c| c.ap50).sum::<f64>() / curves.classes.len() as f64;
            (
                curves.mean(|c| kind.values(c)),
                format!("all classes {map50:.3} mAP@0.5"),
            )
        }
        _ => {
            let mean = curves.smoothed_mean(|c| kind.values(c), SMOOTH_FRACTION);
            let (at, best) =
                mean.iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 { (i, v) } else { best }
                    });
            let confidence = curves.points.get(at).copied().unwrap_or(0.0);
            (mean, format!("all classes {best:.2} at {confidence:.3}"))
        }
    }
}

/// A legend sample: a short line.
fn legend_line(x: i32, y: i32, color: RGBColor, width: u32) -> PathElement<(i32, i32)> {
    PathElement::new([(x, y), (x + 30, y)], color.stroke_width(width))
}
