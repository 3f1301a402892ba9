//! `cargo bench -p fusekit --bench startup`: how long `fusekit rules` and `fusekit lint --help`
//! take from exec to exit, against the same commands in `fusekit-torch` (which loads libtorch,
//! as every command of the default build did before the split) and against starting `true`,
//! each the median of 30 runs in this one run.
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
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("startup, median of {RUNS} runs");
    println!("  true                          {:8.2} ms", ms(floor));
    for args in [&["rules"][..], &["lint", "--help"][..]] {
        let command = args.join(" ");
        let light = median(fusekit, args);
        let heavy = median(torch, args);
        println!(
            "  fusekit {command:<22}{:8.2} ms  ({:.1}x true; goal < 20 ms)",
            ms(light),
            ms(light) / ms(floor)
        );
        println!(
            "  fusekit-torch {command:<16}{:8.2} ms  ({:.0}x fusekit: loading libtorch)",
            ms(heavy),
            ms(heavy) / ms(light)
        );
    }
}
