//! `confusion_matrix.png` and `confusion_matrix_normalized.png`: predicted class (rows)
//! against true class (columns), the background last in both.

use std::path::{Path, PathBuf};

use fusekit_eval::ConfusionMatrix;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::canvas::{Canvas, drawing};
use crate::style::{blues, text};
use crate::{CONFUSION_PNGS, PlotError};

/// Size of each matrix picture.
const SIZE: (u32, u32) = (1600, 1300);
/// Room for the title (top), the row names and "Predicted" (left), the column names and
/// "True" (bottom).
const MARGINS: (i32, i32, i32) = (90, 260, 150);
/// Cells are numbered up to this many classes (with the background); past it they would not
/// fit.
const MAX_ANNOTATED: usize = 30;
/// Normalised shares below this are left blank, as are zero counts.
const BLANK_BELOW: f64 = 0.005;
const WHAT: &str = "confusion matrix";

/// Writes the confusion matrix (counts) and its normalised form (each true class's column
/// sums to 1) into `dir` ([`CONFUSION_PNGS`], returned in that order). `names[c]` names class
/// `c`; the last row and column are the background.
///
/// # Errors
///
/// [`PlotError::Input`] when `names` does not have one name per class of `matrix`;
/// [`PlotError::Io`] when a file cannot be written.
pub fn confusion_matrix(
    matrix: &ConfusionMatrix,
    names: &[String],
    dir: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    if names.len() != matrix.num_classes() {
        return Err(PlotError::Input {
            what: WHAT,
            message: format!(
                "{} names for a matrix of {} classes",
                names.len(),
                matrix.num_classes()
            ),
        });
    }
    let side = matrix.num_classes() + 1;
    let counts: Vec<f64> = (0..side * side)
        .map(|i| matrix.count(i / side, i % side) as f64)
        .collect();
    let mut labels: Vec<&str> = names.iter().map(String::as_str).collect();
    labels.push("background");
    let counts_path = dir.join(CONFUSION_PNGS[0]);
    draw(&counts, &labels, false, &counts_path)?;
    let normalized_path = dir.join(CONFUSION_PNGS[1]);
    draw(&matrix.normalized(), &labels, true, &normalized_path)?;
    Ok(vec![counts_path, normalized_path])
}

/// Draws the `labels.len()`-square matrix `values` (row-major, rows predicted).
fn draw(values: &[f64], labels: &[&str], normalized: bool, path: &Path) -> Result<(), PlotError> {
    let mut canvas = Canvas::white(SIZE.0, SIZE.1)?;
    {
        let root = canvas.area();
        let title = if normalized {
            "Confusion Matrix Normalized"
        } else {
            "Confusion Matrix"
        };
        let centre = Pos::new(HPos::Center, VPos::Center);
        root.draw_text(
            title,
            &text(36.0).pos(centre),
            (SIZE.0 as i32 / 2, MARGINS.0 / 2),
        )
        .map_err(drawing(WHAT))?;
        let grid = Grid::fit(labels.len());
        draw_cells(&root, &grid, values, normalized)?;
        draw_names(&root, &grid, labels)?;
        root.present().map_err(drawing(WHAT))?;
    }
    canvas.save(path)
}

/// Where the cells are.
struct Grid {
    side: usize,
    cell: i32,
    left: i32,
    top: i32,
}

impl Grid {
    /// Square cells as large as fit between the margins.
    fn fit(side: usize) -> Self {
        let (top, left, bottom) = MARGINS;
        let width = SIZE.0 as i32 - left - 40;
        let height = SIZE.1 as i32 - top - bottom;
        let cell = (width.min(height) / side as i32).max(1);
        Grid {
            side,
            cell,
            left,
            top,
        }
    }

    /// Top-left corner of cell (row, column).
    fn corner(&self, row: usize, column: usize) -> (i32, i32) {
        (
            self.left + column as i32 * self.cell,
            self.top + row as i32 * self.cell,
        )
    }

    /// Bottom of the grid.
    fn bottom(&self) -> i32 {
        self.top + self.side as i32 * self.cell
    }
}

/// The coloured cells (darker for larger values) and, when they fit, their numbers.
fn draw_cells(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    grid: &Grid,
    values: &[f64],
    normalized: bool,
) -> Result<(), PlotError> {
    let max = values.iter().copied().fold(0.0, f64::max);
    let annotate = grid.side <= MAX_ANNOTATED;
    let font = (f64::from(grid.cell) * 0.28).min(40.0);
    for (i, &value) in values.iter().enumerate() {
        let (row, column) = (i / grid.side, i % grid.side);
        let (x, y) = grid.corner(row, column);
        let shade = if max > 0.0 { value / max } else { 0.0 };
        root.draw(&Rectangle::new(
            [(x, y), (x + grid.cell, y + grid.cell)],
            blues(shade).filled(),
        ))
        .map_err(drawing(WHAT))?;
        let blank = if normalized {
            value < BLANK_BELOW
        } else {
            value == 0.0
        };
        if annotate && !blank {
            let label = if normalized {
                format!("{value:.2}")
            } else {
                format!("{value:.0}")
            };
            let color = if shade > 0.5 { WHITE } else { BLACK };
            let style = text(font)
                .color(&color)
                .pos(Pos::new(HPos::Center, VPos::Center));
            root.draw_text(&label, &style, (x + grid.cell / 2, y + grid.cell / 2))
                .map_err(drawing(WHAT))?;
        }
    }
    Ok(())
}

/// Class names along both axes and the axis titles.
fn draw_names(
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    grid: &Grid,
    labels: &[&str],
) -> Result<(), PlotError> {
    let size = (f64::from(grid.cell) * 0.3).clamp(9.0, 24.0);
    // Names wider than a column are cut, keeping the start.
    let column_chars = ((f64::from(grid.cell) / (size * 0.6)) as usize).max(1);
    for (i, label) in labels.iter().enumerate() {
        let (x, y) = grid.corner(i, i);
        let row_style = text(size).pos(Pos::new(HPos::Right, VPos::Center));
        root.draw_text(label, &row_style, (grid.left - 10, y + grid.cell / 2))
            .map_err(drawing(WHAT))?;
        let short: String = label.chars().take(column_chars).collect();
        let column_style = text(size).pos(Pos::new(HPos::Center, VPos::Top));
        root.draw_text(
            &short,
            &column_style,
            (x + grid.cell / 2, grid.bottom() + 10),
        )
        .map_err(drawing(WHAT))?;
    }
    let axis = text(30.0).pos(Pos::new(HPos::Center, VPos::Center));
    let grid_middle = grid.left + grid.side as i32 * grid.cell / 2;
    root.draw_text("True", &axis, (grid_middle, grid.bottom() + 80))
        .map_err(drawing(WHAT))?;
    let vertical = axis.transform(FontTransform::Rotate270);
    root.draw_text(
        "Predicted",
        &vertical,
        (40, grid.top + grid.side as i32 * grid.cell / 2),
    )
    .map_err(drawing(WHAT))?;
    Ok(())
}
