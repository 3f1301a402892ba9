//! Compiles the c10d shim against the libtorch that torch-sys links, and links it to that libtorch.
//!
//! The NCCL backend (`shim/nccl_backend.cpp`) is compiled for real only when libtorch is a CUDA
//! build and every header `ProcessGroupNCCL.hpp` needs is found (see [`nccl_includes`]);
//! otherwise it is compiled as a variant whose every call reports why NCCL is missing.

use std::path::{Path, PathBuf};

/// Overrides where the Gloo headers (a folder holding `gloo/context.h`) are looked up.
const GLOO_INCLUDE_VAR: &str = "FUSEKIT_GLOO_INCLUDE";
/// Extra folders (separated by `:`) searched first for the NCCL and CUDA headers.
const CUDA_INCLUDE_VAR: &str = "FUSEKIT_CUDA_INCLUDE";
/// What compiling `ProcessGroupNCCL.hpp` includes, beyond libtorch's own headers.
const NCCL_HEADERS: [&str; 7] = [
    "nccl.h",
    "cuda_runtime_api.h",
    "crt/host_config.h",
    "nv/target",
    "cublas_v2.h",
    "cusparse.h",
    "cusolverDn.h",
];

fn main() {
    fusekit_torch_link::emit();
    println!("cargo:rerun-if-changed=shim/c10d_shim.cpp");
    println!("cargo:rerun-if-changed=shim/nccl_backend.cpp");
    println!("cargo:rerun-if-changed=shim/nccl_backend.h");
    println!("cargo:rerun-if-env-changed={GLOO_INCLUDE_VAR}");
    println!("cargo:rerun-if-env-changed={CUDA_INCLUDE_VAR}");
    println!("cargo:rerun-if-env-changed=FUSEKIT_HOME");
    let lib_dir = PathBuf::from(
        std::env::var_os(fusekit_torch_link::LIBTORCH_LIB_VAR)
            .expect("torch-sys did not publish DEP_TCH_LIBTORCH_LIB"),
    );
    let include = lib_dir.join("../include");
    let gloo = gloo_include().unwrap_or_else(|tried| {
        panic!(
            "fusekit-dist needs Gloo's headers (gloo/context.h), looked in: {tried}. \
             `cargo xtask setup` unpacks them into ~/.cache/fusekit/libgloo-dev; or install \
             them with `apt-get install libgloo-dev`, or set {GLOO_INCLUDE_VAR}."
        )
    });
    let torch_includes = [include.clone(), include.join("torch/csrc/api/include")];

    let mut shim = cc::Build::new();
    shim.cpp(true)
        .file("shim/c10d_shim.cpp")
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None);
    // Third-party headers as system headers: their warnings are not ours to fix.
    system_includes(&mut shim, torch_includes.iter().chain([&gloo]));
    shim.compile("fusekit_c10d");

    let nccl_build = || {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .file("shim/nccl_backend.cpp")
            .std("c++17")
            .define("_GLIBCXX_USE_CXX11_ABI", "1");
        build
    };
    // With the headers found, the real backend; should it not compile (a CUDA header refusing
    // this compiler, say), the variant that reports why, so that the rest still builds.
    let nccl_found = nccl_includes(&lib_dir).and_then(|dirs| {
        let mut nccl = nccl_build();
        nccl.define("USE_C10D_NCCL", None);
        system_includes(&mut nccl, torch_includes.iter().chain(&dirs));
        nccl.try_compile("fusekit_c10d_nccl")
            .map_err(|error| format!("compiling shim/nccl_backend.cpp failed: {error}"))
    });
    if let Err(reason) = &nccl_found {
        // A CPU-only libtorch is an ordinary setup; a CUDA one without NCCL is not.
        if lib_dir.join("libtorch_cuda.so").exists() {
            println!("cargo:warning=fusekit-dist builds without NCCL: {reason}");
        }
        let mut nccl = nccl_build();
        nccl.define("FUSEKIT_NO_NCCL_REASON", Some(c_string(reason).as_str()));
        system_includes(&mut nccl, torch_includes.iter());
        nccl.compile("fusekit_c10d_nccl");
    }

    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    if nccl_found.is_ok() {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

fn system_includes<'a>(build: &mut cc::Build, dirs: impl Iterator<Item = &'a PathBuf>) {
    for dir in dirs {
        build
            .flag("-isystem")
            .flag(dir.to_str().expect("non-UTF-8 include path"));
    }
}

/// `text` as a C string literal.
fn c_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `$FUSEKIT_HOME`, or `~/.cache/fusekit`: where `cargo xtask setup` puts what it installs.
fn fusekit_home() -> Option<PathBuf> {
    std::env::var_os("FUSEKIT_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/fusekit")))
}

/// The include folders that compiling `ProcessGroupNCCL.hpp` needs, or why NCCL is left out.
///
/// Looks in `$FUSEKIT_CUDA_INCLUDE`, then in the `nvidia/*/include` folders of the site-packages
/// folder of PyPI's torch wheel (the NCCL and CUDA runtime packages it depends on), then in
/// those of `<fusekit home>/cuda-headers`, where `cargo xtask setup` installs the CUDA headers
/// that the wheel's dependencies lack (`crt/`, and CCCL's `nv/target`).
fn nccl_includes(lib_dir: &Path) -> Result<Vec<PathBuf>, String> {
    if !lib_dir.join("libtorch_cuda.so").exists() {
        return Err(format!(
            "{} has no libtorch_cuda.so (a CPU-only libtorch)",
            lib_dir.display()
        ));
    }
    let header = lib_dir.join("../include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp");
    if !header.is_file() {
        return Err(format!("{} is missing", header.display()));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os(CUDA_INCLUDE_VAR)
        .map(|dirs| std::env::split_paths(&dirs).collect())
        .unwrap_or_default();
    // torch/lib -> site-packages
    let site = lib_dir.join("../..");
    let installed = fusekit_home().map(|home| home.join("cuda-headers"));
    for root in std::iter::once(site).chain(installed) {
        let Ok(entries) = std::fs::read_dir(root.join("nvidia")) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("include"))
            .filter(|dir| dir.is_dir())
            .collect();
        dirs.sort();
        candidates.extend(dirs);
    }
    let missing: Vec<&str> = NCCL_HEADERS
        .iter()
        .copied()
        .filter(|name| !candidates.iter().any(|dir| dir.join(name).is_file()))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no {} in {} (`cargo xtask setup` installs the CUDA headers that PyPI's torch \
             lacks; or set {CUDA_INCLUDE_VAR})",
            missing.join(", "),
            if candidates.is_empty() {
                "any folder".to_owned()
            } else {
                candidates
                    .iter()
                    .map(|dir| dir.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
    }
    check_cuda_version(lib_dir, &candidates)?;
    Ok(candidates)
}

/// Fails when the CUDA runtime headers found first are another CUDA release than the one
/// libtorch was built with (`cuda = 'X.Y'` in the wheel's `torch/version.py`, when present).
fn check_cuda_version(lib_dir: &Path, candidates: &[PathBuf]) -> Result<(), String> {
    let Ok(version_py) = std::fs::read_to_string(lib_dir.join("../version.py")) else {
        return Ok(());
    };
    let Some(torch_cuda) = version_py
        .lines()
        .find_map(|line| line.strip_prefix("cuda: Optional[str] = "))
        .map(|value| value.trim().trim_matches('\'').to_owned())
    else {
        return Ok(());
    };
    let runtime = candidates
        .iter()
        .map(|dir| dir.join("cuda_runtime_api.h"))
        .find(|path| path.is_file())
        .expect("checked by the caller");
    let text =
        std::fs::read_to_string(&runtime).map_err(|e| format!("{}: {e}", runtime.display()))?;
    let number: u32 = text
        .lines()
        .find_map(|line| line.strip_prefix("#define CUDART_VERSION"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| format!("{} defines no CUDART_VERSION", runtime.display()))?;
    let headers = format!("{}.{}", number / 1000, number % 1000 / 10);
    if headers != torch_cuda {
        return Err(format!(
            "{} is CUDA {headers}, libtorch was built with CUDA {torch_cuda}",
            runtime.display()
        ));
    }
    Ok(())
}

/// The first folder holding `gloo/context.h`, or the list of folders tried.
fn gloo_include() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os(GLOO_INCLUDE_VAR) {
        candidates.push(PathBuf::from(dir));
    }
    // Where `cargo xtask setup` unpacks Debian's libgloo-dev (its FUSEKIT_HOME, as for torch).
    if let Some(home) = fusekit_home() {
        candidates.push(home.join("libgloo-dev/usr/include"));
    }
    candidates.push(PathBuf::from("/usr/include"));
    candidates
        .iter()
        .find(|dir| dir.join("gloo/context.h").is_file())
        .cloned()
        .ok_or_else(|| {
            candidates
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        })
}
