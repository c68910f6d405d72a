//! The official Python SDKs, from PyPI, in a virtualenv the tests create once, driven by
//! scripts under tests/python/.
//!
//! The venv is installed from `tests/python/requirements.txt`, which pins every package
//! (the SDKs and everything they depend on, as `pip freeze` listed them) and is installed
//! with `--no-deps`, so a run never picks up a newer release. It lives in
//! `target/sdk-venv-<hash of the requirements>`: a change of pins makes a new directory and
//! no venv that a concurrently running test binary may be using is ever deleted or
//! replaced. Creation happens under an exclusive lock on `target/sdk-venv.lock` (flock), in
//! a scratch directory renamed into place when complete.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::process::output_within;

/// How long installing the SDKs may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How long one SDK script may run.
const SCRIPT_LIMIT: Duration = Duration::from_secs(120);

fn requirements_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/requirements.txt")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Holds an exclusive flock on a file until dropped (closing the file releases it).
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn acquire(path: &Path, limit: Duration) -> FileLock {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let deadline = Instant::now() + limit;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return FileLock { _file: file },
                Err(e) if e == rustix::io::Errno::WOULDBLOCK || e == rustix::io::Errno::INTR => {
                    assert!(Instant::now() < deadline, "{} stayed locked for {limit:?}", path.display());
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot lock {}: {e}", path.display()),
            }
        }
    }
}

fn run_checked(cmd: &mut Command) {
    let what = format!("{cmd:?}");
    let out = output_within(cmd, None, INSTALL_LIMIT);
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The venv's python, created (and the pinned SDKs installed) on first use.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let requirements = std::fs::read_to_string(requirements_path()).expect("tests/python/requirements.txt");
        let mut h = DefaultHasher::new();
        requirements.hash(&mut h);
        let target = target_dir();
        std::fs::create_dir_all(&target).unwrap();
        let dir = target.join(format!("sdk-venv-{:016x}", h.finish()));
        let py = dir.join("bin/python");
        // Complete venvs are only ever renamed into place, so one that exists is usable.
        if py.is_file() {
            return py;
        }
        let _lock = FileLock::acquire(&target.join("sdk-venv.lock"), INSTALL_LIMIT + Duration::from_secs(60));
        if py.is_file() {
            // Made by another process while this one waited for the lock.
            return py;
        }
        // Scratch directories are only used under the lock, so any left over is from a
        // build that was interrupted.
        let scratch = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&scratch);
        run_checked(Command::new("python3").args(["-m", "venv"]).arg(&scratch));
        run_checked(
            Command::new(scratch.join("bin/python"))
                .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "-r"])
                .arg(requirements_path()),
        );
        // A venv records its own path in its scripts, but `bin/python <script>` works after
        // a move.
        std::fs::rename(&scratch, &dir).expect("move the venv into place");
        py
    })
    .clone()
}

/// Runs `tests/python/<script>` with the SDK venv and the given environment, bounded in
/// time (the process is killed past the limit, or when the test fails).
pub fn run_script(script: &str, env: &[(&str, String)]) -> Output {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python").join(script);
    let mut cmd = Command::new(python());
    cmd.arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Keep SDKs from reading keys or proxies from the developer's environment.
    for k in [
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "ELEVENLABS_API_KEY",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
    ] {
        if !env.iter().any(|(e, _)| e == &k) {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost");
    output_within(&mut cmd, None, SCRIPT_LIMIT)
}

/// Asserts a script succeeded and returns its stdout.
pub async fn run_ok(script: &'static str, env: Vec<(&'static str, String)>) -> String {
    let out = tokio::task::spawn_blocking(move || run_script(script, &env)).await.expect("script task");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
