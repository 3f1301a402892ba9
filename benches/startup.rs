//! `cargo bench -p fusekit --bench startup`: how long `fusekit rules` takes from exec to exit,
//! against the same command in `fusekit-torch` (which loads libtorch) and against starting
//! `true` (the process floor), each the median of 30 runs in this one run.
//!
//! `fusekit` runs the dataset commands without loading libtorch; the goal is under 20 ms.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 30;

/// Median wall time of `program args` over [`RUNS`] runs (after one warm-up run).
fn median(program: &Path, args: &[&str]) -> Duration {
    let mut times: Vec<Duration> = (0..=RUNS)
        .map(|_| {
            let start = Instant::now();
            let status = Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("the command starts");
            assert!(status.success(), "{} {args:?} failed", program.display());
            start.elapsed()
        })
        .skip(1)
        .collect();
    times.sort();
    times[RUNS / 2]
}

fn main() {
    let fusekit = Path::new(env!("CARGO_BIN_EXE_fusekit"));
    let torch = Path::new(env!("CARGO_BIN_EXE_fusekit-torch"));
    let floor = median(Path::new("true"), &[]);
    let rules = median(fusekit, &["rules"]);
    let torch_rules = median(torch, &["rules"]);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("startup, median of {RUNS} runs");
    println!("  true (process floor)      {:8.2} ms", ms(floor));
    println!(
        "  fusekit rules             {:8.2} ms  ({:.1}x the floor; goal < 20 ms)",
        ms(rules),
        ms(rules) / ms(floor)
    );
    println!(
        "  fusekit-torch rules       {:8.2} ms  ({:.1}x fusekit: loading libtorch)",
        ms(torch_rules),
        ms(torch_rules) / ms(rules)
    );
}
