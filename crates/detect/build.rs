fn main() {
    fusekit_torch_link::emit();
}
