//! results.csv on resume: rows after the checkpoint go, a row lost to a kill comes back.

use fusekit_train::{EpochRecord, RESULTS_HEADER, truncate_results};

#[test]
fn resume_keeps_checkpointed_rows_and_restores_a_lost_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("results.csv");
    let row = |e: u32| format!("{e},1.0,0.1,0.1,0.1,0,0,0,0,0,0,0,0.01,0.01,0.01");
    // Killed after the checkpoint of epoch 2 but before its row was appended.
    std::fs::write(&path, format!("{RESULTS_HEADER}\n{}\n", row(1))).unwrap();
    truncate_results(&path, 2, &row(2)).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{RESULTS_HEADER}\n{}\n{}\n", row(1), row(2)));
    // Rows written after the checkpoint (epoch 3) are dropped; nothing is duplicated.
    std::fs::write(&path, format!("{text}{}\n", row(3))).unwrap();
    truncate_results(&path, 2, &row(2)).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

#[test]
fn rows_read_back_as_written() {
    let record = EpochRecord {
        epoch: 7,
        time: 12.5,
        train_loss: [1.25, 0.5, 1.125],
        precision: 0.75,
        recall: 0.625,
        map50: 0.5,
        map50_95: 0.375,
        val_loss: [1.5, 0.25, 1.0],
        lr: [0.01, 0.005, 0.0025],
    };
    assert_eq!(EpochRecord::from_csv_row(&record.csv_row()), Some(record));
    assert_eq!(EpochRecord::from_csv_row(RESULTS_HEADER), None);
    assert_eq!(EpochRecord::from_csv_row("7,1.0,0.1"), None);
}
