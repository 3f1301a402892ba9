//! Developer tasks, run as `cargo xtask TASK` from anywhere in the checkout.
//!
//! - `setup`: install libtorch (PyPI's `torch` wheel) once under `~/.cache/fusekit` (or
//!   `$FUSEKIT_HOME`) and link it as `.libtorch`, where `.cargo/config.toml` points torch-sys;
//!   unpack Debian's `libgloo-dev` headers beside it for fusekit-dist's c10d shim.
//! - `demo`: setup, build fusekit, generate the sample dataset if missing, lint it, split it
//!   and cache it.
//! - `test`: setup, then formatting, clippy and the whole test suite (what CI runs).
//! - `bench`: setup, install Ultralytics for the reference numbers, run the benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

/// The torch release tch 0.26 is built against.
const TORCH_VERSION: &str = "2.13.0";

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = workspace_root();
    match task.as_str() {
        "setup" => setup(&root).map(|_| ()),
        "demo" => demo(&root),
        "test" => test(&root),
        "bench" => bench(&root),
        _ => bail!(
            "usage: cargo xtask <setup|demo|test|bench>\n\n{}",
            include_str!("usage.txt")
        ),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/xtask is two levels down")
        .to_path_buf()
}

fn fusekit_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = std::env::var_os("FUSEKIT_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither FUSEKIT_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/fusekit"))
}

/// Installs torch into `<home>/torch-<version>` unless it is there, and links `.libtorch`.
fn setup(root: &Path) -> anyhow::Result<PathBuf> {
    let target = fusekit_home()?.join(format!("torch-{TORCH_VERSION}"));
    let version_file = target.join("torch/version.py");
    let installed = std::fs::read_to_string(&version_file)
        .is_ok_and(|v| v.contains(&format!("'{TORCH_VERSION}")));
    if !installed {
        let partial = target.with_extension("partial");
        if partial.exists() {
            std::fs::remove_dir_all(&partial)
                .with_context(|| format!("removing {}", partial.display()))?;
        }
        eprintln!(
            "xtask: installing torch=={TORCH_VERSION} from PyPI into {} (once; ~4.7 GB)",
            target.display()
        );
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "--target",
            ])
            .arg(&partial)
            .arg(format!("torch=={TORCH_VERSION}")))?;
        if target.exists() {
            std::fs::remove_dir_all(&target)?;
        }
        std::fs::rename(&partial, &target)
            .with_context(|| format!("moving {} into place", partial.display()))?;
    }
    let link = root.join(".libtorch");
    if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    ensure!(
        target.join("torch/lib/libtorch_cpu.so").is_file(),
        "{} has no torch/lib/libtorch_cpu.so",
        target.display()
    );
    gloo_headers()?;
    Ok(target)
}

/// Unpacks Debian's `libgloo-dev` (headers only, not installed) into `<home>/libgloo-dev` unless
/// it is there: the torch wheel lacks the Gloo headers that its `ProcessGroupGloo.hpp` includes,
/// and fusekit-dist's build looks for them there.
fn gloo_headers() -> anyhow::Result<()> {
    let target = fusekit_home()?.join("libgloo-dev");
    if target.join("usr/include/gloo/context.h").is_file() {
        return Ok(());
    }
    let partial = target.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(&partial)?;
    eprintln!(
        "xtask: unpacking Debian's libgloo-dev headers into {}",
        target.display()
    );
    let download = || {
        run_quiet(
            Command::new("apt-get")
                .args(["download", "libgloo-dev"])
                .current_dir(&partial),
        )
    };
    if !download() {
        // A fresh machine may not have the package lists yet.
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        ensure!(download(), "apt-get download libgloo-dev failed");
    }
    let deb = std::fs::read_dir(&partial)?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&partial))?;
    std::fs::remove_file(&deb)?;
    if target.exists() {
        std::fs::remove_dir_all(&target)?;
    }
    std::fs::rename(&partial, &target)
        .with_context(|| format!("moving {} into place", partial.display()))
}

fn demo(root: &Path) -> anyhow::Result<()> {
    setup(root)?;
    cargo(root, &["build", "--release", "--bin", "fusekit"])?;
    let fusekit = root.join("target/release/fusekit");
    let sample = root.join("datasets/sample");
    if !sample.join("data.yaml").is_file() {
        run(Command::new(&fusekit)
            .arg("synth")
            .arg("--out")
            .arg(&sample)
            .current_dir(root))?;
    }
    // Lint exits 1 on findings; the demo shows them rather than failing.
    let status = Command::new(&fusekit)
        .arg("lint")
        .arg(&sample)
        .current_dir(root)
        .status()?;
    ensure!(
        status.code().is_some_and(|c| c <= 1),
        "fusekit lint failed: {status}"
    );
    // Scenes (the first two digits of the names) stay on one side of the split.
    run(Command::new(&fusekit)
        .args([
            "split",
            "datasets/sample",
            "--val",
            "0.2",
            "--group",
            r"^(\d{2})",
        ])
        .current_dir(root))?;
    run(Command::new(&fusekit)
        .args(["cache", "build", "datasets/sample", "--imgsz", "640"])
        .current_dir(root))?;
    // A short mid-fusion training run at 320 (a few minutes on 2 CPU cores), then predictions
    // on the sample with its best weights.
    run(Command::new(&fusekit)
        .args([
            "train",
            "--data",
            "datasets/sample",
            "--imgsz",
            "320",
            "--fusion",
            "mid",
            "--epochs",
            "3",
            "--batch",
            "8",
            "--name",
            "demo",
        ])
        .current_dir(root))?;
    let weights = std::fs::read_dir(root.join("runs/fuse"))?
        .filter_map(Result::ok)
        .map(|e| e.path().join("weights/best.safetensors"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("no weights from the demo run")?;
    run(Command::new(&fusekit)
        .arg("predict")
        .arg("--weights")
        .arg(&weights)
        .args([
            "--source",
            "datasets/sample",
            "--imgsz",
            "320",
            "--conf",
            "0.1",
            "--out",
            "runs/predict/demo",
        ])
        .current_dir(root))?;
    Ok(())
}

fn test(root: &Path) -> anyhow::Result<()> {
    setup(root)?;
    cargo(root, &["fmt", "--all", "--check"])?;
    cargo(
        root,
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // The parity tests compare with Ultralytics and pycocotools through this python.
    let python = reference_python()?;
    run(Command::new("cargo")
        .args(["test", "--workspace"])
        .current_dir(root)
        .env("FUSEKIT_PYTHON", &python))
}

/// Versions of the Python reference the parity tests and benchmarks compare against.
const ULTRALYTICS_VERSION: &str = "8.4.190";

/// A virtual environment with Ultralytics (and pycocotools, safetensors) next to the same
/// torch, created once under ~/.cache/fusekit; returns its python.
fn reference_python() -> anyhow::Result<PathBuf> {
    let venv = fusekit_home()?.join("ultralytics-venv");
    let python = venv.join("bin/python");
    let ready = python.is_file()
        && run_quiet(Command::new(&python).args([
            "-c",
            &format!(
                "import ultralytics, pycocotools, safetensors; \
assert ultralytics.__version__ == '{ULTRALYTICS_VERSION}'"
            ),
        ]));
    if !ready {
        eprintln!(
            "xtask: installing ultralytics=={ULTRALYTICS_VERSION} (the reference for parity tests \
and benchmarks) into {}",
            venv.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("ultralytics=={ULTRALYTICS_VERSION}"),
                "pycocotools",
                "safetensors",
            ])
            .arg(format!("torch=={TORCH_VERSION}")))?;
    }
    Ok(python)
}

fn bench(root: &Path) -> anyhow::Result<()> {
    setup(root)?;
    let python = reference_python()?;
    let mut command = Command::new("cargo");
    command
        .args([
            "bench",
            "--package",
            "fusekit-lint",
            "--package",
            "fusekit-split",
            "--package",
            "fusekit-cache",
            "--package",
            "fusekit-detect",
            "--package",
            "fusekit",
        ])
        .current_dir(root)
        .env("FUSEKIT_BENCH_PYTHON", &python);
    run(&mut command)
}

fn cargo(root: &Path, args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("cargo").args(args).current_dir(root))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    ensure!(status.success(), "{command:?} failed: {status}");
    Ok(())
}

fn run_quiet(command: &mut Command) -> bool {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
