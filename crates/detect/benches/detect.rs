//! `cargo bench -p fusekit-detect --bench detect`: one training step of the detector on the CPU
//! (forward in train mode, `DetectionLoss`, backward, SGD step and zero_grad; float32, random
//! images and targets made before timing), in milliseconds per image, for yolov8n-scale `rgb`
//! (one stream, the like-for-like case) and `mid` fusion (two backbones, one neck and head).
//!
//! With `FUSEKIT_BENCH_PYTHON` naming a python with Ultralytics, `ultralytics_train_step.py`
//! times the same step for Ultralytics' yolov8n at the same batch, imgsz, classes, boxes and
//! intra-op thread count, its steps interleaved with ours (this machine is noisy), and the table
//! gives fusekit / Ultralytics as median (best) over the timed steps; the goal is `mid`
//! per stream (ms/image / 2) <= 1.1x.
//! Overrides: `FUSEKIT_BENCH_BATCH` (8), `_IMGSZ` (320), `_ITERATIONS` (10), `_WARMUP` (3),
//! `_THREADS` (libtorch's default), `_CLASSES` (1), `_BOXES` per image (4).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use fusekit_detect::{DetectionLoss, Detector, Fusion, ModelConfig, ModelScale};
use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};

/// Milliseconds per image of one step: forward, loss, backward, SGD step + zero_grad, total.
type Sample = [f64; 5];

const PHASES: [&str; 5] = ["forward", "loss", "backward", "step", "total"];
const TOTAL: usize = 4;

#[derive(Debug, Clone, Copy)]
struct Settings {
    batch: i64,
    imgsz: i64,
    iterations: usize,
    warmup: usize,
    threads: i32,
    classes: i64,
    boxes: i64,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Some(threads) = std::env::var("FUSEKIT_BENCH_THREADS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        tch::set_num_threads(threads);
    }
    let s = Settings {
        batch: env_or("FUSEKIT_BENCH_BATCH", 8),
        imgsz: env_or("FUSEKIT_BENCH_IMGSZ", 320),
        iterations: env_or("FUSEKIT_BENCH_ITERATIONS", 10usize).max(1),
        warmup: env_or("FUSEKIT_BENCH_WARMUP", 3),
        threads: tch::get_num_threads(),
        classes: env_or("FUSEKIT_BENCH_CLASSES", 1i64).max(1),
        boxes: env_or("FUSEKIT_BENCH_BOXES", 4),
    };
    eprintln!(
        "fusekit: libtorch {} intra-op threads ({} inter-op), float32, batch {}, imgsz {}, {} classes, {} boxes",
        s.threads,
        tch::get_num_interop_threads(),
        s.batch,
        s.imgsz,
        s.classes,
        s.batch * s.boxes
    );

    let mut reference = Reference::start(&s);
    let mut rgb = Bench::new(&s, Fusion::Rgb);
    let mut mid = Bench::new(&s, Fusion::Mid);
    let mut samples: [Vec<Sample>; 3] = Default::default();
    // Round-robin, rotating who goes first, so that the machine's load spreads over all three.
    for i in 0..s.warmup + s.iterations {
        let mut totals = [f64::NAN; 3];
        for k in 0..3 {
            let who = (i + k) % 3;
            let sample = match who {
                0 => match reference.as_mut().map(Reference::step) {
                    Some(Some(sample)) => sample,
                    Some(None) => {
                        eprintln!("the Ultralytics reference stopped answering");
                        reference = None;
                        continue;
                    }
                    None => continue,
                },
                1 => rgb.step(),
                _ => mid.step(),
            };
            totals[who] = sample[TOTAL];
            if i >= s.warmup {
                samples[who].push(sample);
            }
        }
        eprintln!(
            "{} {i}: ms/image ultralytics {:.1} rgb {:.1} mid {:.1}",
            if i < s.warmup { "warmup" } else { "iteration" },
            totals[0],
            totals[1],
            totals[2]
        );
    }
    drop(reference);

    let [u, r, m] = samples.each_ref().map(|v| summary(v));
    // A reference that stopped half-way is not one.
    let u = u.filter(|_| samples[0].len() == s.iterations);
    let (r, m) = (r.expect("rgb samples"), m.expect("mid samples"));
    println!(
        "| ms per image, median (best) of {} interleaved steps; batch {}, imgsz {}, {} threads, fp32 CPU | fusekit | Ultralytics yolov8n | ratio |",
        s.iterations, s.batch, s.imgsz, s.threads
    );
    println!("| --- | --- | --- | --- |");
    let pair = |x: Summary, k: usize, scale: f64| {
        format!("{:.1} ({:.1})", x.median[k] * scale, x.fastest[k] * scale)
    };
    let theirs = u.map_or_else(|| "skipped".to_owned(), |u| pair(u, TOTAL, 1.0));
    let ratio = |x: Summary, scale: f64| {
        u.map_or_else(
            || "-".to_owned(),
            |u| {
                format!(
                    "{:.2}x ({:.2}x)",
                    x.median[TOTAL] * scale / u.median[TOTAL],
                    x.fastest[TOTAL] * scale / u.fastest[TOTAL]
                )
            },
        )
    };
    println!(
        "| rgb n, one stream (like for like) | {} | {theirs} | {} |",
        pair(r, TOTAL, 1.0),
        ratio(r, 1.0)
    );
    println!(
        "| mid n, raw (two backbones, one neck and head) | {} | {theirs} | {} |",
        pair(m, TOTAL, 1.0),
        ratio(m, 1.0)
    );
    println!(
        "| mid n, per stream (raw / 2): the issue's ratio, goal <= 1.1 | {} | {theirs} | **{}** |",
        pair(m, TOTAL, 0.5),
        ratio(m, 0.5)
    );
    println!();
    println!(
        "| phase, ms per image: median (in the fastest step) | fusekit rgb | fusekit mid | Ultralytics yolov8n |"
    );
    println!("| --- | --- | --- | --- |");
    let names = [
        "forward (train mode)",
        "loss",
        "backward",
        "SGD step + zero_grad",
        "total",
    ];
    for (k, name) in names.iter().enumerate() {
        println!(
            "| {name} | {} | {} | {} |",
            pair(r, k, 1.0),
            pair(m, k, 1.0),
            u.map_or_else(|| "skipped".to_owned(), |u| pair(u, k, 1.0))
        );
    }
    if u.is_none() {
        println!();
        println!(
            "(Ultralytics reference skipped: set FUSEKIT_BENCH_PYTHON to a python with ultralytics)"
        );
    }
}

/// The median of each phase and the phases of the fastest step.
#[derive(Debug, Clone, Copy)]
struct Summary {
    median: Sample,
    fastest: Sample,
}

/// `None` without samples.
fn summary(samples: &[Sample]) -> Option<Summary> {
    let fastest = *samples
        .iter()
        .min_by(|a, b| a[TOTAL].total_cmp(&b[TOTAL]))?;
    let mut median = [0.0; 5];
    for (k, slot) in median.iter_mut().enumerate() {
        let mut v: Vec<f64> = samples.iter().map(|x| x[k]).collect();
        v.sort_by(f64::total_cmp);
        let m = v.len() / 2;
        *slot = if v.len() % 2 == 1 {
            v[m]
        } else {
            (v[m - 1] + v[m]) / 2.0
        };
    }
    Some(Summary { median, fastest })
}

/// The same draws, in the same order and from the same seed, as the Python reference: targets
/// `[batch * boxes, 6]` (image, class, cx, cy, w, h normalised), then the images.
fn inputs(s: &Settings, planes: i64) -> (Tensor, Tensor) {
    tch::manual_seed(0);
    let n = s.batch * s.boxes;
    let r = Tensor::rand([n, 5], (Kind::Float, Device::Cpu));
    let col = |i: i64| r.select(1, i);
    let targets = Tensor::stack(
        &[
            Tensor::arange(n, (Kind::Int64, Device::Cpu)).divide_scalar_mode(s.boxes, "floor"),
            (col(0) * s.classes as f64)
                .floor()
                .clamp_max((s.classes - 1) as f64),
            col(1) * 0.6 + 0.2,
            col(2) * 0.6 + 0.2,
            col(3) * 0.25 + 0.05,
            col(4) * 0.25 + 0.05,
        ]
        .map(|t| t.to_kind(Kind::Float)),
        1,
    );
    let images = Tensor::rand(
        [s.batch, planes, s.imgsz, s.imgsz],
        (Kind::Float, Device::Cpu),
    );
    (images, targets)
}

/// One fusekit model with its optimizer and fixed inputs.
struct Bench {
    _vs: nn::VarStore,
    detector: Detector,
    optimizer: nn::Optimizer,
    criterion: DetectionLoss,
    images: Tensor,
    targets: Tensor,
    batch: f64,
}

impl Bench {
    fn new(s: &Settings, fusion: Fusion) -> Self {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ModelConfig {
            scale: ModelScale::N,
            fusion,
            names: (0..s.classes).map(|i| format!("c{i}")).collect(),
            ir_channels: 1,
        };
        let detector = Detector::new(&vs.root(), config.clone());
        let mut optimizer = nn::Sgd {
            momentum: 0.937,
            dampening: 0.0,
            wd: 5e-4,
            nesterov: true,
        }
        .build(&vs, 0.01)
        .expect("an SGD optimizer");
        optimizer.zero_grad();
        let (images, targets) = inputs(s, config.input_planes());
        Self {
            _vs: vs,
            detector,
            optimizer,
            criterion: DetectionLoss::default(),
            images,
            targets,
            batch: s.batch as f64,
        }
    }

    fn step(&mut self) -> Sample {
        let t0 = Instant::now();
        let outputs = self.detector.forward_t(&self.images, true);
        let t1 = Instant::now();
        let loss = self.criterion.compute(&outputs, &self.targets).unwrap();
        let t2 = Instant::now();
        loss.total.backward();
        let t3 = Instant::now();
        self.optimizer.step();
        self.optimizer.zero_grad();
        let t4 = Instant::now();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3 / self.batch;
        [ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, t4), ms(t0, t4)]
    }
}

/// `ultralytics_train_step.py --serve`: one Ultralytics step per request.
struct Reference {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Reference {
    fn start(s: &Settings) -> Option<Self> {
        let Some(python) = std::env::var_os("FUSEKIT_BENCH_PYTHON") else {
            eprintln!("FUSEKIT_BENCH_PYTHON is not set: skipping the Ultralytics reference");
            return None;
        };
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/ultralytics_train_step.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(
                [
                    s.batch,
                    s.imgsz,
                    s.iterations as i64,
                    s.warmup as i64,
                    i64::from(s.threads),
                    s.classes,
                    s.boxes,
                ]
                .map(|v| v.to_string()),
            )
            .arg("--serve")
            .env("OMP_NUM_THREADS", s.threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| eprintln!("cannot run the Ultralytics reference: {e}"))
            .ok()?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take()?);
        // Ultralytics may print notes on stdout before it is ready.
        let mut line = String::new();
        loop {
            line.clear();
            if stdout.read_line(&mut line).ok()? == 0 {
                eprintln!("the Ultralytics reference exited before it was ready");
                let _ = child.wait();
                return None;
            }
            if line.trim() == "ready" {
                break;
            }
            eprint!("ultralytics: {line}");
        }
        Some(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn step(&mut self) -> Option<Sample> {
        writeln!(self.stdin.as_mut()?, "step").ok()?;
        self.stdin.as_mut()?.flush().ok()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).ok()?;
        let v: serde_json::Value = serde_json::from_str(line.trim()).ok()?;
        let mut sample = [0.0; 5];
        for (slot, name) in sample.iter_mut().zip(PHASES) {
            *slot = v[name].as_f64()?;
        }
        Some(sample)
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
