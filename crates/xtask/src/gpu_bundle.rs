//! `cargo xtask gpu-bundle --out DIR [--torch 2.11.0]`: fusekit built here for a GPU machine
//! that has its own torch (under its python3) but no Rust and no network.
//!
//! The bundle is built against that torch release (its wheel installed here once, without its
//! CUDA dependencies) with the tch release made for it, in a copy of the checkout whose
//! `Cargo.toml` names that tch: the main build stays on [`crate::TORCH_VERSION`]. The binary
//! has no run path: the bundle's `fusekit` launcher points `LD_LIBRARY_PATH` at
//! `$FUSEKIT_TORCH_LIB`, else at the torch of the machine's python3.
//!
//! `DIR` (at most [`BUNDLE_LIMIT`]) holds `bin/fusekit` and `bin/fusekit-torch`, the launcher,
//! `gpu-check.sh` with its
//! Python steps and the small wheels Ultralytics needs there (`wheels/`); the one large wheel,
//! polars' runtime, goes to `DIR-wheels/`, to be carried once on a first call.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail, ensure};

use crate::{ULTRALYTICS_VERSION, cargo_command, fusekit_home, pip_install_into, run};

/// The torch release of the GPU machine's python3 (KINDS.md: 2.11.0+cu130).
const DEFAULT_TORCH: &str = "2.11.0";
/// What travels in one call, less room for the working tree.
const BUNDLE_LIMIT: u64 = 60 << 20;
/// The Python the GPU machine runs (3.12), for the wheels downloaded here.
const TARGET_PYTHON: &str = "3.12";
/// Wheels Ultralytics needs that the GPU machine's image lacks (small ones).
const SMALL_WHEELS: &[&str] = &[
    "ultralytics-thop==2.2.3",
    "ultralytics-platform==0.1.99",
    "polars==2.1.0",
];
/// polars' compiled runtime: too large to share a call with the binary.
const LARGE_WHEELS: &[&str] = &["polars-runtime-32==2.1.0"];

/// The tch (and torch-sys) release built against each torch release.
fn tch_for_torch(torch: &str) -> Option<&'static str> {
    match torch {
        "2.11.0" => Some("0.24"),
        "2.13.0" => Some("0.26"),
        _ => None,
    }
}

/// Options of `gpu-bundle`.
struct BundleArgs {
    out: PathBuf,
    torch: String,
}

fn parse(args: &[String]) -> anyhow::Result<BundleArgs> {
    let mut out = None;
    let mut torch = DEFAULT_TORCH.to_owned();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a folder")?)),
            "--torch" => torch = args.next().context("--torch needs a version")?.clone(),
            other => bail!("gpu-bundle: unknown argument {other} (--out DIR [--torch VERSION])"),
        }
    }
    Ok(BundleArgs {
        out: out.context("gpu-bundle needs --out DIR")?,
        torch,
    })
}

/// Builds the bundle into `--out`.
pub(crate) fn gpu_bundle(root: &Path, main_torch: &Path, args: &[String]) -> anyhow::Result<()> {
    let args = parse(args)?;
    let tch = tch_for_torch(&args.torch).with_context(|| {
        format!(
            "no tch release is known for torch {} (known: 2.11.0, 2.13.0)",
            args.torch
        )
    })?;
    let torch = install_torch(&args.torch, main_torch)?;
    let work = root.join("target/gpu-bundle");
    let source = work.join("src");
    copy_checkout(root, &source)?;
    pin_tch(&source.join("Cargo.toml"), tch)?;
    let release = build(&source, &work.join("target"), &torch, main_torch)?;
    assemble(root, &release, &args.out)
}

/// Installs torch `version` into `<home>/torch-<version>` without its dependencies (the
/// headers and libraries to build against) unless it is there, and links the main torch's
/// CUDA libraries (`nvidia/`, the same CUDA major release) beside it, where its
/// `libtorch_cuda.so` looks for them: so `FUSEKIT_TORCH_LIB=<home>/torch-<version>/torch/lib`
/// runs the bundle here too, without a second 4 GB of CUDA wheels.
fn install_torch(version: &str, main_torch: &Path) -> anyhow::Result<PathBuf> {
    let target = fusekit_home()?.join(format!("torch-{version}"));
    let installed = std::fs::read_to_string(target.join("torch/version.py"))
        .is_ok_and(|v| v.contains(&format!("'{version}")));
    if !installed {
        eprintln!(
            "xtask: installing torch=={version} (no dependencies) into {} (once)",
            target.display()
        );
        pip_install_into(&target, &[&format!("torch=={version}"), "--no-deps"])?;
    }
    let cuda = target.join("nvidia");
    if !cuda.exists() && main_torch.join("nvidia").is_dir() {
        std::os::unix::fs::symlink(main_torch.join("nvidia"), &cuda)
            .with_context(|| format!("linking {}", cuda.display()))?;
    }
    Ok(target)
}

/// Copies the checkout's tracked and unignored files into `dest` (replacing what changed).
fn copy_checkout(root: &Path, dest: &Path) -> anyhow::Result<()> {
    let listed = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(root)
        .output()
        .context("running git ls-files")?;
    ensure!(listed.status.success(), "git ls-files failed");
    for name in listed.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).context("a non-UTF-8 file name")?;
        let (from, to) = (root.join(name), dest.join(name));
        if !from.is_file() {
            continue; // deleted but not yet committed
        }
        let same = std::fs::read(&to).ok() == Some(std::fs::read(&from)?);
        if !same {
            std::fs::create_dir_all(to.parent().expect("a file has a parent"))?;
            std::fs::copy(&from, &to).with_context(|| format!("copying {name}"))?;
        }
    }
    Ok(())
}

/// Rewrites the workspace's `tch` and `torch-sys` requirements to `version`.
fn pin_tch(manifest: &Path, version: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(manifest)?;
    let mut pinned = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            for name in ["tch", "torch-sys"] {
                if line.starts_with(&format!("{name} = \"")) {
                    pinned += 1;
                    return format!("{name} = \"{version}\"");
                }
            }
            line.to_owned()
        })
        .collect();
    ensure!(
        pinned == 2,
        "{} does not name tch and torch-sys as `NAME = \"VERSION\"`",
        manifest.display()
    );
    std::fs::write(manifest, lines.join("\n") + "\n")?;
    Ok(())
}

/// `cargo build --release` of the copy's binaries against `torch`; returns their folder.
fn build(source: &Path, target: &Path, torch: &Path, main_torch: &Path) -> anyhow::Result<PathBuf> {
    // torch-sys imports torch to find it; importing a wheel installed without its CUDA
    // dependencies needs CUDA libraries, which the main torch's install (the same CUDA
    // major release) has.
    let python_path = std::env::join_paths([torch, main_torch])?;
    let mut command = cargo_command(source, &["build", "--release", "--bins"]);
    command
        .env("CARGO_TARGET_DIR", target)
        .env("PYTHONPATH", python_path)
        .env("FUSEKIT_NO_RUNPATH", "1")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    if let Some(includes) = nvidia_includes(main_torch) {
        // NCCL's and CUDA's headers, for fusekit-dist's NCCL backend.
        command.env("FUSEKIT_CUDA_INCLUDE", includes);
    }
    run(&mut command)?;
    Ok(target.join("release"))
}

/// The `nvidia/*/include` folders of a torch install with its dependencies, `:`-joined.
fn nvidia_includes(torch: &Path) -> Option<std::ffi::OsString> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(torch.join("nvidia"))
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("include"))
        .filter(|dir| dir.is_dir())
        .collect();
    dirs.sort();
    std::env::join_paths(dirs).ok()
}

/// Fills `out` (and `out-wheels`) from scratch with the binaries in `release`.
fn assemble(root: &Path, release: &Path, out: &Path) -> anyhow::Result<()> {
    let large = PathBuf::from(format!("{}-wheels", out.display()));
    for dir in [out, large.as_path()] {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    std::fs::create_dir_all(out.join("bin"))?;
    for binary in ["fusekit", "fusekit-torch"] {
        std::fs::copy(release.join(binary), out.join("bin").join(binary))
            .with_context(|| format!("copying {binary}"))?;
    }
    let tools = root.join("tools/gpu-check");
    for name in [
        "fusekit",
        "gpu-check.sh",
        "gpu_check.py",
        "ultralytics_train.py",
    ] {
        std::fs::copy(tools.join(name), out.join(name))
            .with_context(|| format!("copying tools/gpu-check/{name}"))?;
    }
    let ultralytics = format!("ultralytics=={ULTRALYTICS_VERSION}");
    let mut small: Vec<&str> = SMALL_WHEELS.to_vec();
    small.push(&ultralytics);
    download_wheels(&small, &out.join("wheels"))?;
    download_wheels(LARGE_WHEELS, &large)?;
    let size = folder_size(out)?;
    ensure!(
        size <= BUNDLE_LIMIT,
        "{} is {:.1} MiB, over the {} MiB that may travel in one call",
        out.display(),
        size as f64 / f64::from(1 << 20),
        BUNDLE_LIMIT >> 20
    );
    eprintln!(
        "xtask: {} ({:.1} MiB) and {} ({:.1} MiB, carry once): run `OUT=... {}/gpu-check.sh`",
        out.display(),
        size as f64 / f64::from(1 << 20),
        large.display(),
        folder_size(&large)? as f64 / f64::from(1 << 20),
        out.display()
    );
    Ok(())
}

/// `pip download`s wheels for the GPU machine's Python into `dir`.
fn download_wheels(requirements: &[&str], dir: &Path) -> anyhow::Result<()> {
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            TARGET_PYTHON,
            "--implementation",
            "cp",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "manylinux_2_17_x86_64",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "any",
            "--dest",
        ])
        .arg(dir)
        .args(requirements))
}

fn folder_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            folder_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
