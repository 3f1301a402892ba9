//! `fusekit run`: the command-line side of a pipeline run.
//!
//! `fusekit-pipeline` reads the file, plans the run and executes it, each stage through its
//! typed entry point in `fusekit-stages`; this module only draws (bars and notes on stderr,
//! the closing table or `--format json` on stdout) and chooses the exit status.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use fusekit_pipeline::{
    Observer, Pipeline, Selection, execute, lock_run_dir, plan_run, prepare_dataset, render_plan,
};

use crate::output::Format;
use crate::progress::Bars;

/// Run a pipeline file: lint, split, cache, train and predict, skipping what is current.
///
/// Each stage records in `RUNS/NAME/STAGE/stage.json` the fingerprint of what it consumed
/// (its parameters, and the dataset's files or the previous stage's fingerprint). A stage
/// whose fingerprint is unchanged is skipped; changing a parameter reruns that stage and the
/// ones after it. An interrupted stage reruns, and training continues from its checkpoint.
/// Error-level lint findings stop the pipeline unless the file accepts their codes.
#[derive(Args)]
#[command(
    after_long_help = "Exit status: 0 when every selected stage finished, 1 when lint stopped \
the pipeline, 2 for an invalid pipeline file or a failed stage.\n\n\
Stages: lint, split, cache, train-FUSION and predict-FUSION for each fusion mode of the train \
section. --from and --until take a stage name, or lint/split/cache/train/predict for the \
first (--from) or last (--until) stage of that kind."
)]
pub struct RunArgs {
    /// The pipeline file (`pipelines/NAME.yaml`).
    pipeline: PathBuf,
    /// Start at this stage: it and the later ones run even when up to date; the earlier ones
    /// must have finished and are used as they are.
    #[arg(long, value_name = "STAGE")]
    from: Option<String>,
    /// Stop after this stage.
    #[arg(long, value_name = "STAGE")]
    until: Option<String>,
    /// Rerun the selected stages even when up to date.
    #[arg(long)]
    force: bool,
    /// Print the plan (what runs, what is skipped and why) and exit.
    #[arg(long)]
    dry_run: bool,
    /// `human`: the closing table; `json`: every stage's outcome (progress stays on stderr).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    format: Format,
}

/// Runs `fusekit run`.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let pipeline = Pipeline::load(&args.pipeline)?;
    for warning in &pipeline.warnings {
        eprintln!("warning: {warning}");
    }
    let mut observer = observer();
    let selection = Selection {
        from: args.from.clone(),
        until: args.until.clone(),
        force: args.force,
    };
    if args.dry_run {
        let fingerprint = if pipeline.data.exists() {
            prepare_dataset(&pipeline, &observer)?
        } else {
            eprintln!(
                "dataset {} is missing: `fusekit synth` would generate it first",
                pipeline.data.display()
            );
            "missing".to_owned()
        };
        let steps = plan_run(&pipeline, &fingerprint, &selection)?;
        eprint!("{}", render_plan(&pipeline, &steps));
        return Ok(ExitCode::SUCCESS);
    }
    // One run of a pipeline at a time; the second plans once the first is done.
    let _lock = lock_run_dir(&pipeline, &observer)?;
    let fingerprint = prepare_dataset(&pipeline, &observer)?;
    let steps = plan_run(&pipeline, &fingerprint, &selection)?;
    eprint!("{}", render_plan(&pipeline, &steps));
    let outcome = execute(&pipeline, &steps, &mut observer)?;
    match args.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&outcome)?),
        Format::Human if outcome.stopped_by_lint.is_none() => print!("{}", outcome.summary()),
        Format::Human => {}
    }
    Ok(if outcome.stopped_by_lint.is_some() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Bars and notes on stderr; training runs report there too.
#[cfg(feature = "train")]
fn observer() -> impl Observer {
    crate::train::TrainView {
        bars: Bars::default(),
        report: crate::train::reporter(std::io::stderr(), true),
    }
}

/// Bars and notes on stderr.
#[cfg(not(feature = "train"))]
fn observer() -> impl Observer {
    Bars::default()
}
