//! `vfs-tests`: walguard's test harness binary. The first argument picks the tool.

use std::process::ExitCode;

const USAGE: &str = "usage: vfs-tests <command> [args]\n\
commands:\n  \
worker --vfs unix|walguard --db PATH [--name N] [--flags rwc|rw|ro] [--uid N] [--busy-ms N]\n    \
a scripted SQLite process: one command per stdin line, one reply per stdout line";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        // `worker defect17 ...`: the issue-17 defect scenarios, dispatched here so the
        // worker does not import the module that drives it.
        Some("worker") if args.get(2).map(String::as_str) == Some("defect17") => {
            vfs_tests::defect17::main(&args[3..])
        }
        Some("worker") => vfs_tests::worker::main(&args[2..]),
        Some("torture") => vfs_tests::torture::main(&args[2..]),
        Some("torture-worker") => vfs_tests::torture::worker_main(&args[2..]),
        Some("bench") => vfs_tests::bench::main(&args[2..]),
        Some("bench-child") => vfs_tests::bench::child_main(&args[2..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("vfs-tests: unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
