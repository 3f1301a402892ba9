//! `schedule.png`: what `fusekit train --print-schedule` prints, drawn per batch: the
//! learning rate of each parameter group, the momentum and the gradient accumulation.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::PlotError;
use crate::canvas::{Canvas, drawing};
use crate::results::{draw_legend, padded_range};
use crate::style::{class_color, text};

/// Size of the schedule plot.
const SIZE: (u32, u32) = (1400, 1200);
const WHAT: &str = "the schedule";

/// The optimizer settings at one loader batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScheduleStep {
    /// Learning rate per parameter group, in the order of [`schedule`]'s `groups`.
    pub lr: [f64; 3],
    /// SGD momentum (AdamW beta1).
    pub momentum: f64,
    /// Micro-batches per optimizer step.
    pub accumulate: u32,
}

/// Draws `steps` (one per loader batch of the run, in order) into `path`: three panels over
/// the run's batches, the learning rate of each of `groups` (one line each), the momentum, and
/// the accumulation, with a grid line at each of the first epochs' starts
/// (`batches_per_epoch` apart).
///
/// # Errors
///
/// [`PlotError::Input`] for no steps or no batches per epoch; [`PlotError::Io`] when `path`
/// cannot be written.
pub fn schedule(
    steps: &[ScheduleStep],
    groups: [&str; 3],
    batches_per_epoch: u64,
    path: &Path,
) -> Result<(), PlotError> {
    if steps.is_empty() || batches_per_epoch == 0 {
        return Err(PlotError::Input {
            what: WHAT,
            message: format!("{} batches, {batches_per_epoch} per epoch", steps.len()),
        });
    }
    let mut canvas = Canvas::white(SIZE.0, SIZE.1)?;
    {
        let root = canvas.area();
        let panels = root.split_evenly((3, 1));
        let lr: Vec<(&str, Vec<f64>)> = groups
            .iter()
            .enumerate()
            .map(|(g, &name)| (name, steps.iter().map(|s| s.lr[g]).collect()))
            .collect();
        let momentum = [("momentum", steps.iter().map(|s| s.momentum).collect())];
        let accumulate = [(
            "accumulate",
            steps.iter().map(|s| f64::from(s.accumulate)).collect(),
        )];
        let epoch = batches_per_epoch as f64;
        panel(&panels[0], "learning rate per parameter group", &lr, epoch)?;
        panel(&panels[1], "momentum", &momentum, epoch)?;
        panel(
            &panels[2],
            "accumulation (micro-batches per step)",
            &accumulate,
            epoch,
        )?;
        root.present().map_err(drawing(WHAT))?;
    }
    canvas.save(path)
}

/// One panel: each of `series` (name, one value per batch) against the batch, a legend when
/// there are several.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    caption: &str,
    series: &[(&str, Vec<f64>)],
    batches_per_epoch: f64,
) -> Result<(), PlotError> {
    let batches = series[0].1.len();
    let y_range = padded_range(series.iter().flat_map(|(_, v)| v.iter().copied()));
    let mut chart = ChartBuilder::on(area)
        .caption(caption, text(24.0))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(90)
        .build_cartesian_2d(0.0..batches.max(1) as f64, y_range)
        .map_err(drawing(WHAT))?;
    chart
        .configure_mesh()
        .light_line_style(RGBColor(235, 235, 235))
        .label_style(text(16.0))
        .x_desc("batch")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .axis_desc_style(text(16.0))
        .x_labels(10)
        .y_labels(6)
        .draw()
        .map_err(drawing(WHAT))?;
    // Epoch starts, when there are few enough to tell apart.
    let epochs = (batches as f64 / batches_per_epoch).ceil() as usize;
    if (2..=50).contains(&epochs) {
        let (lo, hi) = (chart.y_range().start, chart.y_range().end);
        chart
            .draw_series((1..epochs).map(|e| {
                let x = e as f64 * batches_per_epoch;
                PathElement::new([(x, lo), (x, hi)], RGBColor(210, 210, 210).stroke_width(1))
            }))
            .map_err(drawing(WHAT))?;
    }
    for (index, (name, values)) in series.iter().enumerate() {
        let colour = class_color(index);
        // Earlier series are drawn wider, so that equal ones (the weight and bn groups share
        // their learning rate) still show as a line within a line.
        let width = 2 + 3 * (series.len() - 1 - index) as u32;
        chart
            .draw_series(LineSeries::new(
                values.iter().enumerate().map(|(b, &v)| (b as f64, v)),
                colour.stroke_width(width),
            ))
            .map_err(drawing(WHAT))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 24, y)], colour.stroke_width(width))
            });
    }
    if series.len() > 1 {
        draw_legend(&mut chart, 16.0, WHAT)?;
    }
    Ok(())
}
