//! `labels.jpg`: instances per class, the boxes laid over each other, and 2-D histograms of
//! box centres and box sizes.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::canvas::{Canvas, drawing};
use crate::style::{blues, class_color, text};
use crate::{LabelBox, PlotError};

/// Size of `labels.jpg`.
const SIZE: (u32, u32) = (1600, 1600);
/// Bins per axis of the 2-D histograms.
const BINS: usize = 50;
/// Boxes drawn in the overlay panel (the first ones).
const OVERLAY_BOXES: usize = 1000;
const WHAT: &str = "labels.jpg";

/// Draws the statistics of `boxes` (normalised centre and size; `image` is ignored) into
/// `path`: instances per class (`names[c]` names class `c`), every box centred on one
/// square, box centres (x against y) and box sizes (width against height).
///
/// # Errors
///
/// [`PlotError::Input`] for no names, a class without a name, or a coordinate that is not
/// finite; [`PlotError::Io`] when `path` cannot be written.
pub fn labels(boxes: &[LabelBox], names: &[String], path: &Path) -> Result<(), PlotError> {
    if names.is_empty() {
        return Err(input("no class names".to_owned()));
    }
    for (i, b) in boxes.iter().enumerate() {
        if b.class as usize >= names.len() {
            return Err(input(format!(
                "box {i} has class {}, but there are {} names",
                b.class,
                names.len()
            )));
        }
        if ![b.x, b.y, b.w, b.h].iter().all(|v| v.is_finite()) {
            return Err(input(format!(
                "box {i} has a coordinate that is not finite"
            )));
        }
    }
    let mut canvas = Canvas::white(SIZE.0, SIZE.1)?;
    {
        let root = canvas.area();
        let panels = root.split_evenly((2, 2));
        draw_instances(&panels[0], boxes, names)?;
        draw_overlay(&panels[1], boxes)?;
        let centres: Vec<(f32, f32)> = boxes.iter().map(|b| (b.x, b.y)).collect();
        draw_histogram(&panels[2], &centres, ("x", "y"))?;
        let sizes: Vec<(f32, f32)> = boxes.iter().map(|b| (b.w, b.h)).collect();
        draw_histogram(&panels[3], &sizes, ("width", "height"))?;
        root.present().map_err(drawing(WHAT))?;
    }
    canvas.save(path)
}

fn input(message: String) -> PlotError {
    PlotError::Input {
        what: WHAT,
        message,
    }
}

/// A bar per class: its number of boxes.
fn draw_instances(
    panel: &DrawingArea<BitMapBackend<'_>, Shift>,
    boxes: &[LabelBox],
    names: &[String],
) -> Result<(), PlotError> {
    let mut counts = vec![0u32; names.len()];
    for b in boxes {
        counts[b.class as usize] += 1;
    }
    let top = f64::from(counts.iter().copied().max().unwrap_or(0).max(1));
    // Class c's bar is centred on x = c.
    let classes = names.len() as f64;
    let mut chart = ChartBuilder::on(panel)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5..classes - 0.5, 0.0..top * 1.1)
        .map_err(drawing(WHAT))?;
    let class_name = |v: &f64| {
        let c = v.round();
        let on_tick = (v - c).abs() < 1e-6 && c >= 0.0;
        on_tick
            .then(|| names.get(c as usize).cloned())
            .flatten()
            .unwrap_or_default()
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .y_desc("instances")
        .axis_desc_style(text(24.0))
        .label_style(text(18.0))
        .x_labels(names.len().min(30))
        .x_label_formatter(&class_name)
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(drawing(WHAT))?;
    chart
        .draw_series(counts.iter().enumerate().map(|(c, &n)| {
            let x = c as f64;
            Rectangle::new(
                [(x - 0.4, 0.0), (x + 0.4, f64::from(n))],
                class_color(c).filled(),
            )
        }))
        .map_err(drawing(WHAT))?;
    Ok(())
}

/// The first boxes, each centred on the unit square, outlined in its class colour.
fn draw_overlay(
    panel: &DrawingArea<BitMapBackend<'_>, Shift>,
    boxes: &[LabelBox],
) -> Result<(), PlotError> {
    let mut chart = ChartBuilder::on(panel)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0f32..1f32, 1f32..0f32)
        .map_err(drawing(WHAT))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .label_style(text(18.0))
        .draw()
        .map_err(drawing(WHAT))?;
    chart
        .draw_series(boxes.iter().take(OVERLAY_BOXES).map(|b| {
            let (w, h) = (b.w.clamp(0.0, 1.0) / 2.0, b.h.clamp(0.0, 1.0) / 2.0);
            Rectangle::new(
                [(0.5 - w, 0.5 - h), (0.5 + w, 0.5 + h)],
                class_color(b.class as usize).mix(0.4).stroke_width(1),
            )
        }))
        .map_err(drawing(WHAT))?;
    Ok(())
}

/// A 2-D histogram of `points` on the unit square, darker for fuller bins.
fn draw_histogram(
    panel: &DrawingArea<BitMapBackend<'_>, Shift>,
    points: &[(f32, f32)],
    (x_desc, y_desc): (&str, &str),
) -> Result<(), PlotError> {
    let bin = |v: f32| ((v.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1);
    let mut counts = vec![0u32; BINS * BINS];
    for &(x, y) in points {
        counts[bin(y) * BINS + bin(x)] += 1;
    }
    let max = f64::from(counts.iter().copied().max().unwrap_or(0).max(1));
    let mut chart = ChartBuilder::on(panel)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)
        .map_err(drawing(WHAT))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .axis_desc_style(text(24.0))
        .label_style(text(18.0))
        .draw()
        .map_err(drawing(WHAT))?;
    let step = 1.0 / BINS as f64;
    chart
        .draw_series(
            counts
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(i, &n)| {
                    let (x, y) = ((i % BINS) as f64 * step, (i / BINS) as f64 * step);
                    // Square root, so that sparse bins stay visible next to a crowded one.
                    let shade = 0.15 + 0.85 * (f64::from(n) / max).sqrt();
                    Rectangle::new([(x, y), (x + step, y + step)], blues(shade).filled())
                }),
        )
        .map_err(drawing(WHAT))?;
    Ok(())
}
