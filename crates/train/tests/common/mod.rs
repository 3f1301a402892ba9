//! Helpers shared by the integration tests.

// Each test binary that includes this module uses some of its helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use fusekit_cache::{BuildInput, BuildOptions, MapMode, build};
use fusekit_synth::{SynthOptions, generate};

/// `inputs` cached at imgsz 64 (disk mode, class `person`) as `dir/NAME.fkc`, which it returns.
fn cache_of(dir: &Path, name: &str, inputs: &[BuildInput]) -> PathBuf {
    let target = dir.join(format!("{name}.fkc"));
    let build_options = BuildOptions {
        imgsz: 64,
        mode: MapMode::Disk,
        names: vec!["person".into()],
        ..BuildOptions::default()
    };
    build(&target, inputs, &build_options, &|| {}).unwrap();
    target
}

/// Runs the ignored test `worker` of the current test binary as ranks 0 and 1 of a loopback
/// group (torchrun's variables, one OpenMP thread each) with `env` set, and waits for both;
/// panics with a rank's output when it fails.
pub fn run_two_ranks(worker: &str, env: &[(&str, &OsStr)]) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let exe = std::env::current_exe().unwrap();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            Command::new(&exe)
                .args(["--exact", worker, "--ignored", "--test-threads=1"])
                .envs(env.iter().copied())
                .env("OMP_NUM_THREADS", "1")
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (rank, child) in ranks.into_iter().enumerate() {
        let output: Output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "rank {rank} of {worker} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Generates `options`' pairs into `dir/NAME-data` and caches them at imgsz 64 (disk mode) into
/// `dir/NAME.fkc`, which it returns.
pub fn synth_cache(dir: &Path, name: &str, options: &SynthOptions) -> PathBuf {
    let data = dir.join(format!("{name}-data"));
    generate(&data, options, &|| {}).unwrap();
    let inputs: Vec<BuildInput> = (0..options.pairs)
        .map(|i| {
            let stem = fusekit_synth::pair_stem(options, i);
            BuildInput {
                name: stem.clone(),
                rgb: data.join(format!("images/{stem}.jpg")),
                ir: data.join(format!("imagesIR/{stem}.jpg")),
                label: Some(data.join(format!("labels/{stem}.txt"))),
            }
        })
        .collect();
    cache_of(dir, name, &inputs)
}

/// Objects of [`same_pair_cache`]'s pair: class, then centre x, y, width, height (normalised).
/// Large enough that an untrained detector's boxes overlap them: otherwise every target score
/// is ~0, the loss's normaliser `max(target score sum, 1)` is 1 and the loss grows with the
/// square of the batch size (Ultralytics' convention, which fusekit keeps).
const OBJECTS: [[f32; 5]; 5] = [
    [0.0, 0.30, 0.30, 0.44, 0.40],
    [0.0, 0.72, 0.28, 0.40, 0.44],
    [0.0, 0.28, 0.72, 0.40, 0.44],
    [0.0, 0.70, 0.70, 0.44, 0.40],
    [0.0, 0.50, 0.50, 0.90, 0.90],
];

/// One pair painted with [`OBJECTS`] (bright rectangles on a textured background, in both the
/// RGB and the IR image) cached `copies` times as `dir/NAME.fkc` at imgsz 64, each copy a
/// sample of its own: every batch of any size then has the same per-image statistics, in any
/// order.
pub fn same_pair_cache(dir: &Path, name: &str, copies: usize) -> PathBuf {
    let data = dir.join(format!("{name}-data"));
    std::fs::create_dir_all(&data).unwrap();
    let size = 64u32;
    let inside = |x: u32, y: u32| {
        OBJECTS.iter().position(|o| {
            let (fx, fy) = (
                (x as f32 + 0.5) / size as f32,
                (y as f32 + 0.5) / size as f32,
            );
            (fx - o[1]).abs() < o[3] / 2.0 && (fy - o[2]).abs() < o[4] / 2.0
        })
    };
    let rgb = image::RgbImage::from_fn(size, size, |x, y| match inside(x, y) {
        Some(k) => image::Rgb([200, 120 + 12 * k as u8, 90]),
        None => image::Rgb([
            ((x * 7 + y * 3) % 50) as u8 + 20,
            40,
            ((x + y) % 30) as u8 + 30,
        ]),
    });
    let ir = image::GrayImage::from_fn(size, size, |x, y| match inside(x, y) {
        Some(k) => image::Luma([230 - 8 * k as u8]),
        None => image::Luma([((x * 5 + y * 11) % 40) as u8 + 30]),
    });
    let (rgb_path, ir_path) = (data.join("rgb.png"), data.join("ir.png"));
    rgb.save(&rgb_path).unwrap();
    ir.save(&ir_path).unwrap();
    let label = data.join("label.txt");
    let rows: Vec<String> = OBJECTS
        .iter()
        .map(|o| format!("{} {} {} {} {}", o[0], o[1], o[2], o[3], o[4]))
        .collect();
    std::fs::write(&label, rows.join("\n") + "\n").unwrap();
    let inputs: Vec<BuildInput> = (0..copies)
        .map(|i| BuildInput {
            name: format!("copy{i}"),
            rgb: rgb_path.clone(),
            ir: ir_path.clone(),
            label: Some(label.clone()),
        })
        .collect();
    cache_of(dir, name, &inputs)
}
