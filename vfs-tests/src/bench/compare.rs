//! `--compare REF`: two builds of walguard against each other.
//!
//! REF (any git revision of this repository) is checked out in a temporary
//! `git worktree` inside the bench directory; the *current* harness (`vfs-tests/` of the
//! tree this binary was built from) is copied over the worktree's own, so that both
//! binaries run the same workloads and differ only in the `walguard` crate they link;
//! that copy is built with the same profile as this binary, with its own target
//! directory (`target/bench-compare` of the current tree, kept between runs so that
//! only the two workspace crates are rebuilt), and the worktree is removed again.
//!
//! Both sides then run every workload as a child process (`vfs-tests bench-child run`),
//! on walguard, alternating as in the normal bench; the ratio is current/REF.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::bench::measure::Sample;
use crate::bench::workloads::{run_once, Sizes, Workload};
use crate::bench::{note, recheck_arg, Env, Side};
use crate::worker::Vfs;

/// The repository this binary was built from (the workspace root of `vfs-tests`).
pub(crate) fn default_repo() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn git(repo: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {} (in {}) failed: {}",
            args.join(" "),
            repo.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `<short sha>` of HEAD, with `+changes` when the work tree differs from it.
pub(crate) fn describe_current(repo: &Path) -> String {
    let head = git(repo, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|_| "?".to_owned());
    let dirty = git(repo, &["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    format!("{head}{}", if dirty { "+changes" } else { "" })
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let entries = fs::read_dir(from).map_err(|e| format!("cannot list {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", from.display()))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot stat {}: {e}", src.display()))?;
        if kind.is_dir() {
            if entry.file_name() == "target" || entry.file_name() == "__pycache__" {
                continue;
            }
            copy_dir(&src, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst)
                .map_err(|e| format!("cannot copy {} to {}: {e}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

/// A built REF: the binary (copied into the bench directory) and its description.
pub(crate) struct BuiltRef {
    pub(crate) exe: PathBuf,
    /// `REF (sha)`.
    pub(crate) label: String,
    pub(crate) sha: String,
}

/// Builds REF's walguard with the current harness; see the module documentation.
pub(crate) fn build_ref(reference: &str, repo: &Path, work: &Path) -> Result<BuiltRef, String> {
    let sha = git(
        repo,
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            &format!("{reference}^{{commit}}"),
        ],
    )
    .map_err(|_| format!("--compare {reference}: not a commit of {}", repo.display()))?;
    let short = &sha[..sha.len().min(10)];
    let wt = work.join(format!("ref-{short}"));
    if wt.exists() {
        let _ = git(
            repo,
            &["worktree", "remove", "--force", &wt.to_string_lossy()],
        );
        let _ = fs::remove_dir_all(&wt);
    }
    git(
        repo,
        &["worktree", "add", "--detach", &wt.to_string_lossy(), &sha],
    )?;
    let built = build_in(repo, &wt, work, short);
    // The binary is self-contained (walguard and SQLite are linked in): the worktree
    // goes now, whatever the build did.
    let removed = git(
        repo,
        &["worktree", "remove", "--force", &wt.to_string_lossy()],
    );
    if removed.is_err() {
        let _ = fs::remove_dir_all(&wt);
        let _ = git(repo, &["worktree", "prune"]);
    }
    let exe = built?;
    Ok(BuiltRef {
        exe,
        label: format!("{reference} ({short})"),
        sha,
    })
}

fn build_in(repo: &Path, wt: &Path, work: &Path, short: &str) -> Result<PathBuf, String> {
    let harness = wt.join("vfs-tests");
    let _ = fs::remove_dir_all(&harness);
    copy_dir(&repo.join("vfs-tests"), &harness)?;
    let target = repo.join("target").join("bench-compare");
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    note(&format!(
        "building {short} (walguard of REF, harness of the current tree, {} profile) in {} \
         with target directory {} ...",
        if release { "release" } else { "dev" },
        wt.display(),
        target.display()
    ));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(wt)
        .args(["build", "-p", "vfs-tests", "--bin", "vfs-tests"])
        .env("CARGO_TARGET_DIR", &target)
        .stdin(Stdio::null());
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cargo:?}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(30).collect();
        return Err(format!(
            "building REF {short} with the current harness failed (the harness may use \
             walguard API that REF does not have):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    let built = target
        .join(if release { "release" } else { "debug" })
        .join("vfs-tests");
    let exe = work.join(format!("vfs-tests-{short}"));
    fs::copy(&built, &exe).map_err(|e| {
        format!(
            "cannot copy the built {} to {}: {e}",
            built.display(),
            exe.display()
        )
    })?;
    Ok(exe)
}

/// Runs one workload round of one side in a child process of `exe`.
pub(crate) fn run_in_child(
    env: &Env,
    exe: &Path,
    side: &Side,
    w: Workload,
    round: usize,
) -> Result<Sample, String> {
    let dir = env.dir.join(side.key);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "bench-child",
        "run",
        "--vfs",
        side.vfs.name(),
        "--workload",
        w.name(),
        "--round",
        &round.to_string(),
        "--sizes",
        if env.quick { "quick" } else { "full" },
        "--read-recheck-ms",
        &recheck_arg(),
        "--busy-dir-rate",
        &env.sizes.busy_dir_rate.to_string(),
        "--dir",
    ])
    .arg(&dir);
    if let Some((p, rows)) = &env.read_db {
        cmd.arg("--read-db")
            .arg(p)
            .args(["--read-rows", &rows.to_string()]);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match (out.status.success(), parse_sample(&stdout)) {
        (true, Some(s)) => Ok(s),
        _ => Err(format!(
            "{} bench-child run {} ({}) exited with {}: {}{}",
            exe.display(),
            w.name(),
            side.label,
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn sample_line(s: &Sample) -> String {
    format!(
        "sample ops={} wall_ns={} cpu_ns={} busy_calls={} busy_slept_ms={} busy_errors={} \
         dir_files_per_s={}",
        s.ops,
        s.wall.as_nanos(),
        s.cpu.as_nanos(),
        s.busy.handler_calls,
        s.busy.slept_ms,
        s.busy.errors,
        s.dir_files_per_s
    )
}

fn parse_sample(stdout: &str) -> Option<Sample> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("sample "))?;
    let mut s = Sample::default();
    let mut seen = 0;
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "ops" => s.ops = v,
            "wall_ns" => s.wall = Duration::from_nanos(v),
            "cpu_ns" => s.cpu = Duration::from_nanos(v),
            "busy_calls" => s.busy.handler_calls = v,
            "busy_slept_ms" => s.busy.slept_ms = v,
            "busy_errors" => s.busy.errors = v,
            "dir_files_per_s" => s.dir_files_per_s = v,
            _ => continue,
        }
        seen += 1;
    }
    (seen == 7).then_some(s)
}

/// `vfs-tests bench-child run`: one round of one workload in this process, the sample
/// on stdout.
pub(crate) fn child_run(
    vfs: Vfs,
    dir: &Path,
    workload: &str,
    round: usize,
    sizes: &str,
    read_db: Option<(PathBuf, u64)>,
    busy_dir_rate: Option<u64>,
) -> Result<(), String> {
    let w = Workload::parse(workload).ok_or_else(|| format!("unknown workload {workload:?}"))?;
    let quick = match sizes {
        "quick" => true,
        "full" => false,
        other => return Err(format!("--sizes must be quick or full, not {other:?}")),
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let mut sizes = if quick { Sizes::quick() } else { Sizes::full() };
    if let Some(r) = busy_dir_rate {
        sizes.busy_dir_rate = r;
    }
    let env = Env {
        dir: dir.to_path_buf(),
        exe,
        sizes,
        quick,
        read_db,
        speedtest1: None,
        sides: Side::unix_walguard(),
    };
    let s = run_once(&env, w, vfs, round)?;
    println!("{}", sample_line(&s));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::measure::Busy;

    #[test]
    fn sample_round_trip() {
        let s = Sample {
            ops: 7,
            wall: Duration::from_nanos(123_456),
            cpu: Duration::from_nanos(99),
            busy: Busy {
                handler_calls: 3,
                slept_ms: 4,
                errors: 1,
            },
            dir_files_per_s: 4321,
        };
        let back = parse_sample(&format!("noise\n{}\n", sample_line(&s))).expect("parses");
        assert_eq!(back.ops, 7);
        assert_eq!(back.wall, s.wall);
        assert_eq!(back.cpu, s.cpu);
        assert_eq!(back.busy, s.busy);
        assert_eq!(back.dir_files_per_s, 4321);
        assert!(parse_sample("sample ops=1").is_none());
    }

    #[test]
    fn default_repo_is_the_workspace() {
        assert!(default_repo()
            .join("vfs-tests")
            .join("Cargo.toml")
            .is_file());
    }
}
