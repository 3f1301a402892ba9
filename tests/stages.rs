//! Every stage driven through its typed entry point in `fusekit-stages`, without the CLI, and a
//! pipeline whose `imgsz` and `batch`, stated once, reach lint, the cache, the loader and the
//! trainer with no file written in between.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fusekit_hyp::{Hyp, Imgsz};
use fusekit_pipeline::{Pipeline, Selection, execute, plan_run, prepare_dataset};
use fusekit_stages::train::{Observer, Report, Subset, TrainData};
use fusekit_stages::{Progress, Silent, cache, import, lint, predict, split, train, val};
use fusekit_synth::{Defect, SynthOptions, generate};
use fusekit_train::Event;

/// A generated 24-pair dataset (96x80, 4 scenes) with the given defects.
fn dataset(dir: &Path, inject: &[Defect]) -> PathBuf {
    let out = dir.join("ds");
    let options = SynthOptions {
        pairs: 24,
        width: 96,
        height: 80,
        scenes: 4,
        inject: inject.to_vec(),
        ..SynthOptions::default()
    };
    generate(&out, &options, &|| {}).unwrap();
    out
}

fn imgsz(size: u32) -> Imgsz {
    Imgsz::new(size).unwrap()
}

/// Records notes and counts the tasks a stage reports.
#[derive(Default)]
struct Recorder {
    notes: Mutex<Vec<String>>,
    tasks: Mutex<Vec<(&'static str, u64)>>,
}

impl Progress for Recorder {
    fn begin(&self, task: &'static str, total: u64, _unit: &'static str) {
        self.tasks.lock().unwrap().push((task, total));
    }

    fn note(&self, line: &str) {
        self.notes.lock().unwrap().push(line.to_owned());
    }
}

/// A train observer that keeps what the trainer was set up with and each batch's images.
#[derive(Default)]
struct TrainRecorder {
    progress: Recorder,
    setup: Option<(u32, u32)>,
    planned_batch: Option<u32>,
    images_per_batch: Vec<usize>,
}

impl Progress for TrainRecorder {
    fn begin(&self, task: &'static str, total: u64, unit: &'static str) {
        self.progress.begin(task, total, unit);
    }

    fn note(&self, line: &str) {
        self.progress.note(line);
    }
}

impl Observer for TrainRecorder {
    fn report(&mut self, report: Report<'_>) {
        match report {
            Report::Setup { hyp, .. } => self.setup = Some((hyp.imgsz, hyp.batch)),
            Report::Trainer(Event::Started { plan, .. }) => self.planned_batch = Some(plan.batch()),
            Report::Trainer(Event::Batch { batch, images, .. }) => {
                let before: usize = self.images_per_batch.iter().sum();
                if batch == 0 {
                    self.images_per_batch.clear();
                    self.images_per_batch.push(images);
                } else {
                    self.images_per_batch.push(images - before);
                }
            }
            _ => {}
        }
    }
}

#[test]
fn lint_reports_blocks_accepts_and_measures_lbl011_at_its_imgsz() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), &[Defect::Pair001]);
    // A box of 2% of the width: 1.3 px at imgsz 64, 12.8 px at 640.
    let label = data.join("labels/010002.txt");
    let mut text = std::fs::read_to_string(&label).unwrap();
    text.push_str("0 0.5 0.5 0.02 0.02\n");
    std::fs::write(&label, text).unwrap();

    let progress = Recorder::default();
    let small = lint::run(&lint::Params::new(&data, imgsz(64)), &progress).unwrap();
    assert_eq!(small.summary.pairs, 24);
    assert_eq!(small.blocking, ["PAIR001"]);
    assert_eq!(small.exit_code(), 1);
    assert!(small.summary.by_code.contains_key("LBL011"), "{small:?}");
    assert_eq!(
        progress.tasks.lock().unwrap().as_slice(),
        [("lint", 24)],
        "one counted task"
    );
    let large = lint::run(&lint::Params::new(&data, imgsz(640)), &Silent).unwrap();
    assert!(!large.summary.by_code.contains_key("LBL011"), "{large:?}");

    let mut accepting = lint::Params::new(&data, imgsz(64));
    accepting.settings.accept = vec!["PAIR".into()];
    accepting.report_dir = Some(dir.path().to_path_buf());
    let accepted = lint::run(&accepting, &Silent).unwrap();
    assert!(accepted.blocking.is_empty());
    assert_eq!(accepted.accepted, 1);
    assert_eq!(accepted.exit_code(), 0);
    assert!(dir.path().join("report.json").is_file());
    // The outcome is what stage.json stores: it reads back as itself (the report aside).
    let stored: lint::Outcome =
        serde_json::from_str(&serde_json::to_string(&accepted).unwrap()).unwrap();
    assert_eq!(stored.summary, accepted.summary);

    let missing = lint::run(
        &lint::Params::new(dir.path().join("nope"), imgsz(64)),
        &Silent,
    );
    assert_eq!(missing.unwrap().exit_code(), 2, "DS001");
}

#[test]
fn split_then_cache_write_once_and_keep_what_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), &[Defect::Pair001]);
    let out = dir.path().join("split");
    let params = split::Params {
        data: data.clone(),
        names: None,
        levels: Default::default(),
        out: Some(out.clone()),
        force: false,
        settings: split::Settings {
            val: 0.25,
            group: Some(r"^(\d{2})".into()),
            ..split::Settings::default()
        },
    };
    let first = split::run(&params, &Silent).unwrap();
    assert_eq!(first.outcome, split::Written::Written);
    assert_eq!(first.data, out.join("split.yaml"));
    let manifest = first.manifest.as_ref().unwrap();
    assert_eq!(
        manifest.excluded.len(),
        1,
        "the pair without IR is left out"
    );
    assert_eq!(manifest.pairs.train + manifest.pairs.val, 23);
    assert_eq!(
        split::run(&params, &Silent).unwrap().outcome,
        split::Written::UpToDate
    );
    let bad = split::Params {
        settings: split::Settings {
            val: 0.9,
            test: 0.2,
            ..split::Settings::default()
        },
        ..params.clone()
    };
    assert!(split::run(&bad, &Silent).is_err());

    let progress = Recorder::default();
    let mut cache_params = cache::Params::new(&out, imgsz(64));
    cache_params.out = Some(dir.path().join("cache"));
    let built = cache::run(&cache_params, &progress).unwrap();
    let splits: Vec<&str> = built.files.iter().map(|f| f.split.as_str()).collect();
    assert_eq!(splits, ["train", "val"]);
    assert_eq!(built.pairs, 23);
    assert!(
        built
            .files
            .iter()
            .all(|f| !f.up_to_date && f.ir_planes == 1)
    );
    let notes = progress.notes.lock().unwrap().join("\n");
    assert!(
        notes.contains("train: ") && notes.contains("-> "),
        "{notes}"
    );
    let again = cache::run(&cache_params, &Silent).unwrap();
    assert!(again.files.iter().all(|f| f.up_to_date), "{again:?}");
    let wrong = cache::Params {
        split: Some("nope".into()),
        ..cache_params
    };
    let err = cache::run(&wrong, &Silent).unwrap_err().to_string();
    assert!(err.contains("the dataset has train, val"), "{err}");
}

#[test]
fn import_turns_a_miniature_llvip_into_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("LLVIP");
    for (split, stem) in [("train", "010001"), ("test", "020001")] {
        for modality in ["visible", "infrared"] {
            let path = src.join(format!("{modality}/{split}/{stem}.jpg"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            image::RgbImage::from_pixel(64, 48, image::Rgb([90, 120, 150]))
                .save(&path)
                .unwrap();
        }
        let xml = "<annotation><size><width>64</width><height>48</height></size><object><name>\
                   person</name><bndbox><xmin>10</xmin><ymin>8</ymin><xmax>30</xmax><ymax>24\
                   </ymax></bndbox></object></annotation>";
        std::fs::create_dir_all(src.join("Annotations")).unwrap();
        std::fs::write(src.join(format!("Annotations/{stem}.xml")), xml).unwrap();
    }
    let params = import::Params {
        source: import::Source::Llvip { src: src.clone() },
        out: dir.path().join("out"),
        names: None,
        force: false,
        copy: true,
    };
    let progress = Recorder::default();
    let report = import::run(&params, &progress).unwrap();
    assert_eq!(report.pairs(), 2);
    assert_eq!(report.names, ["person"]);
    assert!(dir.path().join("out/data.yaml").is_file());
    let tasks: Vec<&str> = progress.tasks.lock().unwrap().iter().map(|t| t.0).collect();
    assert_eq!(tasks, ["read", "write"]);
    let err = import::run(&params, &Silent).unwrap_err().to_string();
    assert!(
        err.contains("not empty") || err.contains("--force"),
        "{err}"
    );
}

#[test]
fn train_val_and_predict_run_from_their_params() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path(), &[]);
    let split_params = split::Params {
        data: data.clone(),
        names: None,
        levels: Default::default(),
        out: None,
        force: false,
        settings: split::Settings::default(),
    };
    split::run(&split_params, &Silent).unwrap();
    // The dataset folder now holds split.yaml, which the cache stage prefers.
    let mut cache_params = cache::Params::new(&data, imgsz(64));
    cache_params.out = Some(dir.path().join("cache"));
    let built = cache::run(&cache_params, &Silent).unwrap();
    assert_eq!(built.files.len(), 2);

    let hyp = Hyp {
        epochs: 1,
        batch: 4,
        warmup_epochs: 0.0,
        close_mosaic: 0,
        ..Hyp::default()
    };
    let params = train::Params {
        data: TrainData::Cache(dir.path().join("cache")),
        hyp,
        imgsz: None,
        run_dir: dir.path().join("runs/train"),
        resume: false,
        weights: None,
        device: "cpu".into(),
        subset: Subset::First(8),
        distributed: Default::default(),
        simulate_oom_above: None,
    };
    let mut observer = TrainRecorder::default();
    let trained = train::run(&params, &mut observer).unwrap();
    assert_eq!(trained.imgsz.get(), 64, "the cache's size");
    assert_eq!(trained.epochs, 1);
    assert!(trained.weights.best.is_file());
    assert_eq!(observer.setup, Some((64, 4)));
    assert_eq!(observer.images_per_batch, [4, 4]);

    let given = train::Params {
        imgsz: Some(imgsz(128)),
        run_dir: dir.path().join("runs/other"),
        ..params.clone()
    };
    let err = train::run(&given, &mut TrainRecorder::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("training run"), "{err}");
    assert!(!dir.path().join("runs/other").exists(), "no run folder");

    let through_cache = val::Params {
        weights: trained.weights.best.clone(),
        source: val::Source::Cache(dir.path().join("cache/val.fkc")),
        batch: 8,
        nms: Default::default(),
        device: "cpu".into(),
        plots: None,
    };
    let validated = val::run(&through_cache, &Silent).unwrap();
    assert!(validated.images > 0);
    assert_eq!(validated.names, ["person"]);
    // Straight from the dataset: the same split decoded into a temporary cache, the same
    // numbers, and nothing left behind.
    let from_split = |split: &str| val::Params {
        source: val::Source::Dataset {
            data: data.clone(),
            split: split.into(),
            imgsz: imgsz(64),
            ir_norm: None,
        },
        ..through_cache.clone()
    };
    let before = temporary_val_folders();
    let from_data = val::run(&from_split("val"), &Silent).unwrap();
    assert_eq!(from_data.images, validated.images);
    assert_eq!(from_data.metrics, validated.metrics);
    assert_eq!(from_data.val_loss, validated.val_loss);
    assert_eq!(
        temporary_val_folders(),
        before,
        "the temporary cache is removed"
    );
    let missing = val::run(&from_split("holdout"), &Silent).unwrap_err();
    assert!(missing.to_string().contains("holdout"), "{missing}");

    let mut seen = 0;
    let predicted = predict::run(
        &predict::Params {
            weights: trained.weights.best,
            source: predict::Source::Dataset(data),
            imgsz: imgsz(64),
            ir_norm: None,
            nms: fusekit_detect::NmsOptions::predict(),
            out: dir.path().join("predict"),
            device: "cpu".into(),
            pictures: false,
            save: predict::SaveOptions::default(),
        },
        &mut |_| seen += 1,
    )
    .unwrap();
    assert_eq!((predicted.pairs, seen, predicted.pictures), (24, 24, 0));
    let lines = std::fs::read_to_string(predicted.predictions).unwrap();
    assert_eq!(lines.lines().count(), 24);
}

/// `imgsz` and `batch` are stated once in the pipeline file; lint, the cache, the loader and
/// the trainer all get them from there, in memory.
#[test]
fn a_pipelines_imgsz_and_batch_reach_every_stage_without_files_between() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path(), &[]);
    let text = format!(
        "name: once\ndata: ds\nruns: {}\nimgsz: 64\nsplit:\n  val: 0.25\ntrain:\n  \
         fusion: [rgb]\n  epochs: 1\n  batch: 4\n  limit: 8\n  warmup_epochs: 0\n  \
         close_mosaic: 0\n  device: cpu\n",
        dir.path().join("runs").display()
    );
    let path = dir.path().join("p.yaml");
    std::fs::write(&path, &text).unwrap();
    let pipeline = Pipeline::load(&path).unwrap();
    let fingerprint = prepare_dataset(&pipeline, &Silent).unwrap();
    let steps = plan_run(&pipeline, &fingerprint, &Selection::default()).unwrap();

    // The parameters each stage is given.
    let stage = |name: &str| {
        &steps
            .iter()
            .find(|s| s.stage.kind.name() == name)
            .unwrap()
            .stage
    };
    let lint = fusekit_pipeline::lint_params(&pipeline, stage("lint"));
    assert_eq!(
        lint.imgsz.get(),
        64,
        "LBL011 is measured at the training size"
    );
    let cache = fusekit_pipeline::cache_params(&pipeline, stage("cache"));
    assert_eq!(cache.imgsz.get(), 64);
    let train = fusekit_pipeline::train_params(
        &pipeline,
        stage("train-rgb"),
        fusekit_hyp::Fusion::Rgb,
        false,
        &Silent,
    )
    .unwrap();
    assert_eq!((train.imgsz, train.hyp.batch), (Some(imgsz(64)), 4));

    // And what the stages did with them.
    let mut observer = TrainRecorder::default();
    let outcome = execute(&pipeline, &steps, &mut observer).unwrap();
    assert_eq!(outcome.ran, 4);
    assert_eq!(
        observer.setup,
        Some((64, 4)),
        "the trainer's imgsz and batch"
    );
    assert_eq!(observer.planned_batch, Some(4));
    assert_eq!(observer.images_per_batch, [4, 4], "the loader's batches");
    let cache_file = pipeline.run_dir().join("cache/train.fkc");
    let opened = fusekit_cache::Cache::open(&cache_file, None).unwrap();
    assert_eq!(opened.meta().imgsz, 64);
    for entry in walkdir::WalkDir::new(pipeline.run_dir()) {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name != "hyp.yaml" && name != "lint.toml",
            "{name}: parameters are passed in memory"
        );
    }
}

/// The temporary caches of `val` from a dataset in the system's temporary folder.
fn temporary_val_folders() -> usize {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("fusekit-val-")
        })
        .count()
}
