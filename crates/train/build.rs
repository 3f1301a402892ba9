//! Compiles the autocast shim (`shim/autocast.cpp`) against the libtorch that torch-sys links,
//! and gives the tests and benches of this crate a run path to it (fusekit-torch-link).

fn main() {
    fusekit_torch_link::emit();
    fusekit_torch_link::compile_shim(&["shim/autocast.cpp"], "fusekit_autocast");
}
