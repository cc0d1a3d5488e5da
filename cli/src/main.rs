//! `walguard doctor DB` (being built).
mod elf;
mod files;
mod header;
mod holders;
mod journal;
mod locks;
mod shm;
mod sys;
mod wal;

fn main() {
    eprintln!("walguard: doctor is not built yet");
    std::process::exit(2);
}
