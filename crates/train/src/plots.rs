//! The run's plots (rank 0, when `plots` is on): what to draw from the trainer's data, when,
//! and how long it took. A plot that fails is reported, never a reason to stop training.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fusekit_cache::Cache;
use fusekit_loader::{Batch, BatchBox};
use fusekit_plots::{BatchView, LabelBox, PlotError};

use crate::validate::FirstBatch;

use crate::trainer::Event;
use crate::validate::Validation;

/// Draws into the run folder when on, and keeps the time spent.
pub(crate) struct Plots {
    /// The run folder; `None` when plots are off (or on ranks other than 0).
    dir: Option<PathBuf>,
    /// Seconds spent drawing so far.
    seconds: f64,
}

impl Plots {
    /// Plots into `dir` when `on`.
    pub(crate) fn new(on: bool, dir: &Path) -> Self {
        Plots {
            dir: on.then(|| dir.to_path_buf()),
            seconds: 0.0,
        }
    }

    /// Seconds spent drawing.
    pub(crate) fn seconds(&self) -> f64 {
        self.seconds
    }

    /// `results.png` from the run's `results.csv`.
    pub(crate) fn results(&mut self, results_csv: &Path, observer: &mut dyn FnMut(Event<'_>)) {
        self.draw(observer, |dir| {
            fusekit_plots::results(results_csv, &dir.join(fusekit_plots::RESULTS_PNG))
        });
    }

    /// `train_batch{index}.jpg` from loader batch `index` of the first epoch.
    pub(crate) fn train_batch(
        &mut self,
        index: u64,
        batch: &Batch,
        names: &[String],
        observer: &mut dyn FnMut(Event<'_>),
    ) {
        if index >= fusekit_plots::TRAIN_BATCH_PLOTS as u64 {
            return;
        }
        self.draw(observer, |dir| {
            let boxes: Vec<LabelBox> = batch.boxes.iter().map(truth_box).collect();
            let view = BatchView {
                imgsz: batch.imgsz,
                planes: batch.planes,
                images: &batch.images,
                boxes: &boxes,
            };
            let name = fusekit_plots::train_batch_name(index as usize);
            fusekit_plots::paired_batch(&view, names, &dir.join(name))
        });
    }

    /// `file` (`labels.jpg`, `labels_val.jpg`) from the boxes of the first `samples` samples
    /// of `cache`. Called after the first epoch, whose loaders have verified those samples
    /// already, so reading their boxes does not hash their pixels again.
    pub(crate) fn labels(
        &mut self,
        cache: &Cache,
        samples: usize,
        file: &'static str,
        observer: &mut dyn FnMut(Event<'_>),
    ) {
        self.draw(observer, |dir| {
            let mut boxes = Vec::new();
            for i in 0..samples.min(cache.len()) {
                let sample = cache.sample(i).map_err(|e| PlotError::Input {
                    what: file,
                    message: e.to_string(),
                })?;
                boxes.extend(sample.boxes.iter().map(|&[class, x, y, w, h]| LabelBox {
                    image: i,
                    class: class as u32,
                    x,
                    y,
                    w,
                    h,
                    score: None,
                }));
            }
            let path = dir.join(file);
            fusekit_plots::labels(&boxes, &cache.meta().names, &path)
        });
    }

    /// The plots of the run's last validation ([`plot_validation`]).
    pub(crate) fn validation(
        &mut self,
        validation: &Validation,
        names: &[String],
        observer: &mut dyn FnMut(Event<'_>),
    ) {
        self.draw(observer, |dir| {
            plot_validation(validation, names, dir).map(drop)
        });
    }

    /// Runs `plot` on the run folder when plots are on; a failure becomes a note.
    fn draw(
        &mut self,
        observer: &mut dyn FnMut(Event<'_>),
        plot: impl FnOnce(&Path) -> Result<(), PlotError>,
    ) {
        let Some(dir) = &self.dir else {
            return;
        };
        let started = Instant::now();
        if let Err(error) = plot(dir) {
            observer(Event::Note(format!("plot not written: {error}")));
        }
        self.seconds += started.elapsed().as_secs_f64();
    }
}

/// Writes the plots of `validation` into `dir` (which must exist): the PR / F1 / P / R curves,
/// the confusion matrices and, when it had a batch, `val_batch0_labels.jpg` and
/// `val_batch0_pred.jpg`; returns the files. `names[c]` names class `c`.
///
/// # Errors
///
/// The first plot that could not be written.
pub fn plot_validation(
    validation: &Validation,
    names: &[String],
    dir: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    let mut files = fusekit_plots::curves(&validation.metrics.curves, names, dir)?;
    files.extend(fusekit_plots::confusion_matrix(
        &validation.confusion,
        names,
        dir,
    )?);
    if let Some(first) = &validation.first_batch {
        for (boxes, name) in [
            (&first.truths, fusekit_plots::VAL_BATCH_LABELS_JPG),
            (&first.predictions, fusekit_plots::VAL_BATCH_PRED_JPG),
        ] {
            let path = dir.join(name);
            fusekit_plots::paired_batch(&view(first, boxes), names, &path)?;
            files.push(path);
        }
    }
    Ok(files)
}

/// `first`'s pixels with `boxes`.
fn view<'a>(first: &'a FirstBatch, boxes: &'a [LabelBox]) -> BatchView<'a> {
    BatchView {
        imgsz: first.imgsz,
        planes: first.planes,
        images: &first.images,
        boxes,
    }
}

/// The columns `results.png` reads are those `results.csv` is written with.
/// A batch's ground-truth box as the plots draw it.
pub(crate) fn truth_box(b: &BatchBox) -> LabelBox {
    LabelBox {
        image: b.image as usize,
        class: b.class,
        x: b.x,
        y: b.y,
        w: b.w,
        h: b.h,
        score: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::RESULTS_HEADER;

    #[test]
    fn results_png_reads_what_results_csv_holds() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("results.csv");
        let row = "1,2,3,3,3,0.5,0.5,0.5,0.3,2,2,2,0.01,0.01,0.01";
        std::fs::write(&csv, format!("{RESULTS_HEADER}\n{row}\n")).unwrap();
        let mut plots = Plots::new(true, dir.path());
        let mut notes = Vec::new();
        plots.results(&csv, &mut |event| {
            if let Event::Note(note) = event {
                notes.push(note);
            }
        });
        assert!(notes.is_empty(), "{notes:?}");
        assert!(dir.path().join("results.png").is_file());
    }
}
