//! `walguard doctor DB` (being built).
fn main() {
    eprintln!("walguard: doctor is not built yet");
    std::process::exit(2);
}
