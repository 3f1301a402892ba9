//! Compiles the TorchScript shim (`shim/jit_extra.cpp`) against the libtorch that torch-sys
//! links, and links the tests and benches of this crate to libtorch with a run path
//! (fusekit-torch-link).

fn main() {
    fusekit_torch_link::emit();
    fusekit_torch_link::compile_shim(&["shim/jit_extra.cpp"], "fusekit_jit_extra");
}
