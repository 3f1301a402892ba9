//! `fusekit`: the dataset commands without libtorch; the others through `fusekit-torch`.

fn main() -> std::process::ExitCode {
    fusekit::dataset_main()
}
