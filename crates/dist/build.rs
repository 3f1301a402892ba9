//! Compiles the c10d shim against the libtorch that torch-sys links, and links it to that libtorch.

use std::path::{Path, PathBuf};

/// Overrides where the Gloo headers (a folder holding `gloo/context.h`) are looked up.
const GLOO_INCLUDE_VAR: &str = "FUSEKIT_GLOO_INCLUDE";

fn main() {
    fusekit_torch_link::emit();
    println!("cargo:rerun-if-changed=shim/c10d_shim.cpp");
    println!("cargo:rerun-if-env-changed={GLOO_INCLUDE_VAR}");
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
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("shim/c10d_shim.cpp")
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None);
    // Third-party headers as system headers: their warnings are not ours to fix.
    for dir in [
        include.clone(),
        include.join("torch/csrc/api/include"),
        gloo,
    ] {
        build
            .flag("-isystem")
            .flag(dir.to_str().expect("non-UTF-8 include path"));
    }
    build.compile("fusekit_c10d");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// The first folder holding `gloo/context.h`, or the list of folders tried.
fn gloo_include() -> Result<PathBuf, String> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os(GLOO_INCLUDE_VAR) {
        candidates.push(PathBuf::from(dir));
    }
    // Where `cargo xtask setup` unpacks Debian's libgloo-dev (its FUSEKIT_HOME, as for torch).
    println!("cargo:rerun-if-env-changed=FUSEKIT_HOME");
    let fusekit_home = std::env::var_os("FUSEKIT_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/fusekit")));
    if let Some(home) = fusekit_home {
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
