//! Developer tasks, run as `cargo xtask TASK` from anywhere in the checkout.
//!
//! - `setup`: install libtorch (PyPI's `torch` wheel) once under `~/.cache/fusekit` (or
//!   `$FUSEKIT_HOME`) and link it as `.libtorch`, where `.cargo/config.toml` points torch-sys;
//!   unpack Debian's `libgloo-dev` headers beside it for fusekit-dist's c10d shim, and (for a
//!   CUDA torch) install the CUDA headers its NCCL backend compiles with that the wheel lacks;
//!   install Debian's `nasm` (when apt-get can) for libjpeg-turbo's SIMD JPEG decoding, and
//!   Debian's `chromium`, which renders the HTML lint report in its test.
//! - `demo`: setup, build fusekit and run `pipelines/sample.yaml` (which generates the sample
//!   dataset if missing, lints, splits, caches, trains and predicts).
//! - `test`: setup, then formatting, clippy and the whole test suite (what CI runs).
//! - `bench`: setup, install Ultralytics for the reference numbers, run the benchmarks.
//! - `docs-pictures`: the README's pictures under `docs/` (see [`docs_pictures`]).
//! - `gpu-bundle`: setup, then fusekit built for the GPU machine's torch with its device check
//!   (see [`gpu_bundle`]).

mod docs_pictures;
mod gpu_bundle;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

/// The torch release tch 0.26 is built against (the main build's).
const TORCH_VERSION: &str = "2.13.0";
/// The `cuda-toolkit` release that torch 2.13.0's Linux wheel depends on.
const CUDA_TOOLKIT_VERSION: &str = "13.0.3.0";

fn main() -> anyhow::Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    let root = workspace_root();
    match task.as_str() {
        "setup" => setup(&root).map(|_| ()),
        "demo" => demo(&root),
        "test" => test(&root),
        "bench" => bench(&root),
        "docs-pictures" => docs_pictures::docs_pictures(&root),
        "gpu-bundle" => {
            let main_torch = setup(&root)?;
            let args: Vec<String> = std::env::args().skip(2).collect();
            gpu_bundle::gpu_bundle(&root, &main_torch, &args)
        }
        _ => bail!(
            "usage: cargo xtask <setup|demo|test|bench|docs-pictures|gpu-bundle>\n\n{}",
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

pub(crate) fn fusekit_home() -> anyhow::Result<PathBuf> {
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
        eprintln!(
            "xtask: installing torch=={TORCH_VERSION} from PyPI into {} (once; ~4.7 GB)",
            target.display()
        );
        pip_install_into(&target, &[&format!("torch=={TORCH_VERSION}")])?;
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
    if let Err(error) = apt_tool("nasm", "-v", "libjpeg-turbo's SIMD decoding") {
        // mozjpeg-sys then builds libjpeg-turbo without SIMD and says so once in a build warning.
        eprintln!("xtask: note: {error:#}; JPEG decoding for caches builds without SIMD (slower)");
    }
    if let Err(error) = apt_tool("chromium", "--version", "rendering the HTML lint report") {
        eprintln!(
            "xtask: note: {error:#}; the HTML lint report test skips its rendering outside CI"
        );
    }
    if target.join("torch/lib/libtorch_cuda.so").is_file() {
        // Only NCCL needs them: without them fusekit-dist builds with Gloo alone.
        if let Err(error) = cuda_headers() {
            eprintln!("xtask: warning: {error:#}; fusekit-dist will build without NCCL");
        }
    }
    Ok(target)
}

/// Installs the `crt` and `cccl` parts of the CUDA toolkit that torch was built with into
/// `<home>/cuda-headers` unless they are there: `ProcessGroupNCCL.hpp` includes
/// `cuda_runtime.h`, which needs `crt/host_config.h` and CCCL's `nv/target`, and the wheel's
/// own CUDA dependencies ship neither. fusekit-dist's build looks for them there.
fn cuda_headers() -> anyhow::Result<()> {
    let target = fusekit_home()?.join("cuda-headers");
    let marker = target.join(format!("cuda_toolkit-{CUDA_TOOLKIT_VERSION}.dist-info"));
    if marker.is_dir() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing cuda-toolkit {CUDA_TOOLKIT_VERSION}'s crt and cccl headers (for NCCL) \
into {}",
        target.display()
    );
    pip_install_into(
        &target,
        &[&format!("cuda-toolkit[crt,cccl]=={CUDA_TOOLKIT_VERSION}")],
    )
}

/// `pip install --target` of `requirement` (with pip's options) into `target.partial`, then
/// renamed to `target` (replacing an older one): an interrupted install never leaves a
/// half-filled `target`.
pub(crate) fn pip_install_into(target: &Path, requirement: &[&str]) -> anyhow::Result<()> {
    let partial = target.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .with_context(|| format!("removing {}", partial.display()))?;
    }
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
        .args(requirement))?;
    if target.exists() {
        std::fs::remove_dir_all(target)?;
    }
    std::fs::rename(&partial, target)
        .with_context(|| format!("moving {} into place", partial.display()))
}

/// Installs the Debian package `tool` (with apt-get) unless `tool probe` runs: `nasm`, with
/// which mozjpeg-sys assembles libjpeg-turbo's SIMD decoding paths (without it, the plain C
/// paths are built), and `chromium`, which the HTML lint report's test renders with.
fn apt_tool(tool: &str, probe: &str, why: &str) -> anyhow::Result<()> {
    if run_quiet(Command::new(tool).arg(probe)) {
        return Ok(());
    }
    eprintln!("xtask: installing {tool} (apt-get) for {why}");
    let install = || run_quiet(Command::new("apt-get").args(["install", "-y", "-qq", tool]));
    if !install() {
        // A fresh machine may not have the package lists yet.
        run_quiet(Command::new("apt-get").args(["update", "-qq"]));
        ensure!(install(), "apt-get install {tool} failed");
    }
    ensure!(
        run_quiet(Command::new(tool).arg(probe)),
        "{tool} is still not on the PATH after apt-get install"
    );
    Ok(())
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
    // The sample pipeline generates datasets/sample when missing, then lints, splits, caches,
    // trains mid and rgb fusion and predicts; a rerun skips every stage that is current.
    run(Command::new(root.join("target/release/fusekit"))
        .args(["run", "pipelines/sample.yaml"])
        .current_dir(root))
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
pub(crate) const ULTRALYTICS_VERSION: &str = "8.4.190";

/// The ONNX checker and ONNX Runtime the export tests load fusekit's `.onnx` files with.
const ONNX_VERSION: &str = "1.23.2";
const ONNXRUNTIME_VERSION: &str = "1.32.0";

/// A virtual environment with Ultralytics (and pycocotools, safetensors, onnx, onnxruntime)
/// next to the same torch, created once under ~/.cache/fusekit; returns its python.
fn reference_python() -> anyhow::Result<PathBuf> {
    let venv = fusekit_home()?.join("ultralytics-venv");
    let python = venv.join("bin/python");
    let ready = python.is_file()
        && run_quiet(Command::new(&python).args([
            "-c",
            &format!(
                "import ultralytics, pycocotools, safetensors, onnx, onnxruntime; \
assert ultralytics.__version__ == '{ULTRALYTICS_VERSION}'; \
assert onnx.__version__ == '{ONNX_VERSION}'; \
assert onnxruntime.__version__ == '{ONNXRUNTIME_VERSION}'"
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
                &format!("onnx=={ONNX_VERSION}"),
                &format!("onnxruntime=={ONNXRUNTIME_VERSION}"),
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
            "fusekit-loader",
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
    run(&mut cargo_command(root, args))
}

/// `cargo ARGS` in `dir`.
pub(crate) fn cargo_command(dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("cargo");
    command.args(args).current_dir(dir);
    command
}

pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
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
