//! `results.png`: one small panel per `results.csv` column, as Ultralytics lays them out.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::PlotError;
use crate::canvas::{Canvas, drawing};
use crate::style::{MAIN_BLUE, SMOOTH_ORANGE, text};

/// The panels, row by row (2 x 5): training losses, precision, recall; validation losses,
/// mAP50, mAP50-95.
const PANELS: [&str; 10] = [
    "train/box_loss",
    "train/cls_loss",
    "train/dfl_loss",
    "metrics/precision(B)",
    "metrics/recall(B)",
    "val/box_loss",
    "val/cls_loss",
    "val/dfl_loss",
    "metrics/mAP50(B)",
    "metrics/mAP50-95(B)",
];
/// Size of `results.png`.
const SIZE: (u32, u32) = (2400, 1200);
/// Standard deviation, in epochs, of the Gaussian that smooths each series.
const SMOOTH_SIGMA: f64 = 3.0;
const WHAT: &str = "results.png";

/// Draws `results.csv` at `csv` (a header naming its columns, then one row of numbers per
/// epoch) into `png`: per panel the values against `epoch` and their Gaussian-smoothed
/// curve. Non-finite values are left out of their panel.
///
/// # Errors
///
/// [`PlotError::Io`] when `csv` cannot be read or `png` written; [`PlotError::Csv`] for a
/// missing column, a row of the wrong length or a field that is not a number;
/// [`PlotError::Input`] when there is no row.
pub fn results(csv: &Path, png: &Path) -> Result<(), PlotError> {
    let table = Table::read(csv)?;
    let epochs = table.column("epoch")?;
    if epochs.is_empty() {
        return Err(PlotError::Input {
            what: WHAT,
            message: format!("{} has no epoch rows", csv.display()),
        });
    }
    let series: Vec<(&str, Vec<f64>)> = PANELS
        .iter()
        .map(|&name| Ok((name, table.column(name)?)))
        .collect::<Result<_, PlotError>>()?;
    let mut canvas = Canvas::white(SIZE.0, SIZE.1)?;
    {
        let root = canvas.area();
        for (i, (panel, (name, values))) in
            root.split_evenly((2, 5)).iter().zip(&series).enumerate()
        {
            draw_panel(panel, name, &epochs, values, i == 0)?;
        }
        root.present().map_err(drawing(WHAT))?;
    }
    canvas.save(png)
}

/// One panel: `values` against `epochs`, raw (line and points) and smoothed (dashed).
fn draw_panel(
    panel: &DrawingArea<BitMapBackend<'_>, Shift>,
    name: &str,
    epochs: &[f64],
    values: &[f64],
    legend: bool,
) -> Result<(), PlotError> {
    let points: Vec<(f64, f64)> = epochs
        .iter()
        .zip(values)
        .filter(|(e, v)| e.is_finite() && v.is_finite())
        .map(|(&e, &v)| (e, v))
        .collect();
    let ys: Vec<f64> = points.iter().map(|p| p.1).collect();
    let smooth: Vec<(f64, f64)> = points
        .iter()
        .zip(gaussian_smooth(&ys, SMOOTH_SIGMA))
        .map(|(p, s)| (p.0, s))
        .collect();
    let x_range = padded_range(points.iter().map(|p| p.0));
    let y_range = padded_range(ys.iter().copied());
    let mut chart = ChartBuilder::on(panel)
        .caption(name, text(22.0))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(x_range, y_range)
        .map_err(drawing(WHAT))?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(text(14.0))
        .x_labels(6)
        .y_labels(6)
        .draw()
        .map_err(drawing(WHAT))?;
    chart
        .draw_series(LineSeries::new(points, MAIN_BLUE.stroke_width(2)).point_size(4))
        .map_err(drawing(WHAT))?
        .label("results")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], MAIN_BLUE.stroke_width(2)));
    chart
        .draw_series(DashedLineSeries::new(
            smooth,
            8,
            5,
            SMOOTH_ORANGE.stroke_width(2),
        ))
        .map_err(drawing(WHAT))?
        .label("smooth")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 24, y)], SMOOTH_ORANGE.stroke_width(2)));
    if legend {
        draw_legend(&mut chart, 14.0, WHAT)?;
    }
    Ok(())
}

/// A chart of `f64` against `f64` on the plots' bitmap.
pub(crate) type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// The series' legend in the upper right corner of `chart`, text `size` pixels high.
pub(crate) fn draw_legend<'a>(
    chart: &mut Chart<'a, 'a>,
    size: f64,
    what: &'static str,
) -> Result<(), PlotError> {
    chart
        .configure_series_labels()
        .label_font(text(size))
        .background_style(WHITE.mix(0.8))
        .border_style(RGBColor(200, 200, 200))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(drawing(what))
}

/// The range of `values` with 5 % room on each side (a unit-wide one around a single value,
/// `0..1` without values).
pub(crate) fn padded_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let span = hi - lo;
    let pad = if span > 0.0 {
        span * 0.05
    } else {
        lo.abs().max(1.0) * 0.5
    };
    (lo - pad)..(hi + pad)
}

/// Gaussian smoothing with standard deviation `sigma` (in samples), the kernel cut at 4
/// sigma and the series mirrored at its ends.
fn gaussian_smooth(values: &[f64], sigma: f64) -> Vec<f64> {
    let n = values.len() as i64;
    if n == 0 {
        return Vec::new();
    }
    let radius = (4.0 * sigma).round() as i64;
    let kernel: Vec<f64> = (-radius..=radius)
        .map(|k| (-(k * k) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = kernel.iter().sum();
    // Index into the series mirrored at its ends: ... c b a | a b c | c b a ...
    let mirrored = |i: i64| {
        let m = i.rem_euclid(2 * n);
        if m < n { m } else { 2 * n - 1 - m }
    };
    (0..n)
        .map(|i| {
            kernel
                .iter()
                .zip(-radius..=radius)
                .map(|(w, k)| w * values[mirrored(i + k) as usize])
                .sum::<f64>()
                / total
        })
        .collect()
}

/// A CSV file of numbers with a header.
struct Table<'a> {
    path: &'a Path,
    header: Vec<String>,
    rows: Vec<Vec<f64>>,
}

impl<'a> Table<'a> {
    /// Reads `path`; every row must have the header's length and only numbers.
    fn read(path: &'a Path) -> Result<Self, PlotError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            return Err(csv_error(path, 1, "the file is empty".to_owned()));
        };
        let header: Vec<String> = header.split(',').map(|h| h.trim().to_owned()).collect();
        let rows = lines
            .map(|(i, line)| {
                let fields: Vec<&str> = line.split(',').map(str::trim).collect();
                if fields.len() != header.len() {
                    return Err(csv_error(
                        path,
                        i + 1,
                        format!("{} fields, the header has {}", fields.len(), header.len()),
                    ));
                }
                fields
                    .iter()
                    .map(|f| {
                        f.parse::<f64>()
                            .map_err(|_| csv_error(path, i + 1, format!("`{f}` is not a number")))
                    })
                    .collect()
            })
            .collect::<Result<_, _>>()?;
        Ok(Table { path, header, rows })
    }

    /// The values of the column named `name`.
    fn column(&self, name: &str) -> Result<Vec<f64>, PlotError> {
        let index = self
            .header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| csv_error(self.path, 1, format!("no `{name}` column")))?;
        Ok(self.rows.iter().map(|row| row[index]).collect())
    }
}

fn csv_error(path: &Path, line: usize, message: String) -> PlotError {
    PlotError::Csv {
        path: path.to_path_buf(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smoothing_keeps_constants_and_damps_a_spike() {
        let flat = gaussian_smooth(&[2.0; 5], 3.0);
        assert!(flat.iter().all(|v| (v - 2.0).abs() < 1e-12), "{flat:?}");
        let mut spike = vec![0.0; 30];
        spike[15] = 1.0;
        let smoothed = gaussian_smooth(&spike, 3.0);
        assert!(smoothed[15] < 0.2 && smoothed[15] > 0.1, "{}", smoothed[15]);
        assert!(
            (smoothed.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "mass is kept"
        );
        assert!(gaussian_smooth(&[], 3.0).is_empty());
    }

    #[test]
    fn ranges_have_room() {
        assert_eq!(padded_range([1.0, 3.0].into_iter()), 0.9..3.1);
        assert_eq!(padded_range([2.0].into_iter()), 1.0..3.0);
        assert_eq!(padded_range(std::iter::empty()), 0.0..1.0);
    }
}
