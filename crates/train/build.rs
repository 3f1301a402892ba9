//! Links the tests and benches of this crate to libtorch with a run path (fusekit-torch-link).

fn main() {
    fusekit_torch_link::emit();
}
