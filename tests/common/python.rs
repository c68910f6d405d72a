//! The official Python SDKs, from PyPI, in a virtualenv the tests create once
//! (`target/sdk-venv`), driven by scripts under tests/python/.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The SDKs the tests drive, pinned to the versions the fixtures were checked against.
pub const SDKS: &[&str] = &["elevenlabs==2.78.0", "google-genai==3.4.0", "openai==3.54.0", "anthropic==2.12.0"];

fn venv_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("sdk-venv")
}

/// The venv's python, created (and the SDKs installed) on first use.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let dir = venv_dir();
        let py = dir.join("bin/python");
        let marker = dir.join(".installed");
        let wanted = SDKS.join("\n");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
            return py;
        }
        // Build in a fresh directory and rename it into place, so an interrupted install
        // never leaves a half-made venv behind.
        let tmp = dir.with_extension(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
            assert!(
                out.status.success(),
                "{cmd:?} failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("python3").args(["-m", "venv"]).arg(&tmp));
        run(Command::new(tmp.join("bin/python"))
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(SDKS));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).expect("move the venv into place");
        // A venv records its own path in its scripts, but `bin/python -m` works after a move.
        std::fs::write(&marker, wanted).expect("write the venv marker");
        py
    })
    .clone()
}

/// Runs `tests/python/<script>` with the SDK venv and the given environment.
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
    cmd.output().unwrap_or_else(|e| panic!("cannot run {script}: {e}"))
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
