//! `results.csv` with Ultralytics' columns, one row per epoch.

use std::io::Write;
use std::path::Path;

/// Ultralytics' detection `results.csv` header.
pub const RESULTS_HEADER: &str = "epoch,time,train/box_loss,train/cls_loss,train/dfl_loss,\
metrics/precision(B),metrics/recall(B),metrics/mAP50(B),metrics/mAP50-95(B),val/box_loss,\
val/cls_loss,val/dfl_loss,lr/pg0,lr/pg1,lr/pg2";

/// One epoch's results.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: u32,
    /// Seconds since training started.
    pub time: f64,
    /// Mean train box, class and DFL losses of the epoch.
    pub train_loss: [f64; 3],
    /// Precision at the max-mean-F1 confidence.
    pub precision: f64,
    /// Recall at the max-mean-F1 confidence.
    pub recall: f64,
    /// mAP at IoU 0.5.
    pub map50: f64,
    /// mAP at IoU 0.50:0.05:0.95.
    pub map50_95: f64,
    /// Validation box, class and DFL losses.
    pub val_loss: [f64; 3],
    /// Learning rate of each group at the end of the epoch (pg0 weights, pg1 norm, pg2 bias).
    pub lr: [f64; 3],
}

impl EpochRecord {
    /// Ultralytics' fitness: 0.1 x mAP50 + 0.9 x mAP50-95.
    pub fn fitness(&self) -> f64 {
        0.1 * self.map50 + 0.9 * self.map50_95
    }

    /// The row as written to `results.csv`.
    pub fn csv_row(&self) -> String {
        let mut fields = vec![self.epoch.to_string(), format!("{:.3}", self.time)];
        let metrics = [self.precision, self.recall, self.map50, self.map50_95];
        let numbers = self
            .train_loss
            .iter()
            .chain(&metrics)
            .chain(&self.val_loss)
            .chain(&self.lr);
        fields.extend(numbers.map(|v| format!("{v:.6}")));
        fields.join(",")
    }

    /// The record of a row in [`EpochRecord::csv_row`]'s layout (the header's columns);
    /// `None` for any other line.
    pub fn from_csv_row(row: &str) -> Option<EpochRecord> {
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        if fields.len() != RESULTS_HEADER.split(',').count() {
            return None;
        }
        let epoch = fields[0].parse().ok()?;
        let v: Vec<f64> = fields[1..]
            .iter()
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        Some(EpochRecord {
            epoch,
            time: v[0],
            train_loss: [v[1], v[2], v[3]],
            precision: v[4],
            recall: v[5],
            map50: v[6],
            map50_95: v[7],
            val_loss: [v[8], v[9], v[10]],
            lr: [v[11], v[12], v[13]],
        })
    }
}

/// Appends `record` to `path`, writing the header first when the file is new or empty.
pub fn append_results(path: &Path, record: &EpochRecord) -> std::io::Result<()> {
    let fresh = std::fs::metadata(path)
        .map(|m| m.len() == 0)
        .unwrap_or(true);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if fresh {
        writeln!(file, "{RESULTS_HEADER}")?;
    }
    writeln!(file, "{}", record.csv_row())?;
    file.flush()
}

/// Keeps the header and the rows of epochs `1..=epoch` of an existing `results.csv`, and
/// appends `last_row` (epoch `epoch`'s row, from the checkpoint) when that row is missing:
/// a run killed between its checkpoint and the append resumes with a complete file.
pub fn truncate_results(path: &Path, epoch: u32, last_row: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let row_epoch = |line: &str| {
        line.split(',')
            .next()
            .and_then(|e| e.trim().parse::<u32>().ok())
    };
    let mut kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, line)| *i == 0 || row_epoch(line).is_some_and(|e| e <= epoch))
        .map(|(_, line)| line)
        .collect();
    if kept.is_empty() {
        kept.push(RESULTS_HEADER);
    }
    let has_last = kept.iter().any(|line| row_epoch(line) == Some(epoch));
    if !has_last && epoch > 0 && !last_row.is_empty() {
        kept.push(last_row);
    }
    std::fs::write(path, kept.join("\n") + "\n")
}

/// The record of `epoch` in an existing `results.csv`.
pub(crate) fn read_record(path: &Path, epoch: u32) -> Option<EpochRecord> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .filter_map(EpochRecord::from_csv_row)
        .find(|record| record.epoch == epoch)
}
