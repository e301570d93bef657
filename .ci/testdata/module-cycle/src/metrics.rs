pub fn observe() -> usize {
    crate::pipeline::runner::steps()
}
