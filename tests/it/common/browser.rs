//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages, NUL-terminated, on the child's fds 3 and 4), so a test can click and type on
//! a page, not only read its DOM. Blocking; run it on a blocking thread.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use super::process::Guard;

pub fn chromium() -> PathBuf {
    let found = ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file())));
    found.unwrap_or_else(|| panic!("chromium not found on PATH: install Debian's `chromium` package (apt-get install -y chromium)"))
}

/// The flags every headless run here uses.
const HEADLESS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
];

/// Virtual time for one-shot runs: the page's fetches finish before the DOM is read or the
/// picture taken.
const VIRTUAL_TIME: &str = "--virtual-time-budget=5000";

/// Runs chromium once on `url` with `extra` flags (a hang detector bounds it, not a speed
/// check; chromium is killed if the test fails).
fn run_once(url: &str, extra: &[String]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    super::process::output_within(
        Command::new(chromium())
            .args(HEADLESS)
            .arg(VIRTUAL_TIME)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url),
        None,
        Duration::from_secs(90),
    )
}

/// The DOM of `url` after the page's scripts ran. Blocking.
pub fn dump_dom(url: &str) -> String {
    let out = run_once(url, &["--dump-dom".to_string()]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("</html>"),
        "chromium printed no DOM (status {}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// A PNG of `url` at 1280x2000 after the page's scripts ran, written to `path`. Blocking.
pub fn screenshot(url: &str, path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let out = run_once(
        url,
        &[
            format!("--screenshot={}", path.display()),
            "--window-size=1280,2000".to_string(),
            "--hide-scrollbars".to_string(),
        ],
    );
    assert!(
        path.is_file(),
        "chromium wrote no screenshot to {} (status {}):\n{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One browser with one page.
pub struct Browser {
    _process: Guard,
    _profile: tempfile::TempDir,
    to: std::fs::File,
    from: mpsc::Receiver<Value>,
    next: u64,
    session: String,
}

/// Moves `fd` to exactly `target` in the child, without close-on-exec.
fn place(fd: &OwnedFd, target: i32) -> std::io::Result<()> {
    // SAFETY: runs between fork and exec, where `target` is free to be replaced.
    let mut t = unsafe { OwnedFd::from_raw_fd(target) };
    let r = rustix::io::dup2(fd.as_fd(), &mut t);
    std::mem::forget(t);
    r.map_err(std::io::Error::from)
}

impl Browser {
    /// Starts chromium and opens `url` in a new page.
    pub fn open(url: &str) -> Browser {
        let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).unwrap();
        let (child_in, to_child) = pipe();
        let (from_child, child_out) = pipe();
        // Far from 3 and 4, so placing one cannot clobber the other.
        let child_in = rustix::io::fcntl_dupfd_cloexec(&child_in, 100).unwrap();
        let child_out = rustix::io::fcntl_dupfd_cloexec(&child_out, 100).unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(chromium());
        cmd.args(HEADLESS)
            .arg("--remote-debugging-pipe")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: `place` only calls dup2 (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || {
                place(&child_in, 3)?;
                place(&child_out, 4)
            });
        }
        let process = Guard::spawn(&mut cmd);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(std::fs::File::from(from_child));
            loop {
                let mut buf = Vec::new();
                match reader.read_until(0, &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        buf.pop();
                        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                            if tx.send(v).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut b = Browser {
            _process: process,
            _profile: profile,
            to: std::fs::File::from(to_child),
            from: rx,
            next: 0,
            session: String::new(),
        };
        let target = b.command(None, "Target.createTarget", json!({"url": url}));
        let target = target["targetId"].as_str().expect("a target id").to_string();
        let attached = b.command(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true}));
        b.session = attached["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// Sends one command and waits (bounded) for its answer.
    fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.try_command(session, method, params)
            .unwrap_or_else(|e| panic!("chromium refused {method}: {e}"))
    }

    fn try_command(&mut self, session: Option<&str>, method: &str, params: Value) -> Result<Value, Value> {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("chromium reads its pipe");
        loop {
            let v = self
                .from
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    return Err(e.clone());
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Evaluates `js` in the page (promises awaited); its value, or a panic with the page's
    /// exception.
    pub fn eval(&mut self, js: &str) -> Value {
        let session = self.session.clone();
        let params = json!({"expression": js, "awaitPromise": true, "returnByValue": true});
        // While the page is (re)loading its context may go away under an evaluation: retry.
        let mut tries = 0;
        let r = loop {
            match self.try_command(Some(&session), "Runtime.evaluate", params.clone()) {
                Ok(r) => break r,
                Err(e) if tries < 50 && e["message"].as_str().is_some_and(|m| m.contains("context")) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("chromium refused Runtime.evaluate: {e}"),
            }
        };
        if let Some(e) = r.get("exceptionDetails") {
            panic!("the page threw: {e}\nwhile evaluating:\n{js}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until the JS expression `cond` is truthy in the page (at most 20 s).
    pub fn wait_for(&mut self, cond: &str) {
        let js = format!(
            "new Promise((ok, fail) => {{ const end = Date.now() + 20000; (function poll() {{ let v; try {{ v = ({cond}); }} catch (e) {{ v = false; }} if (v) ok(true); else if (Date.now() > end) fail(new Error('timed out waiting for: ' + {cond:?} + '\\n' + document.body.innerText.slice(0, 3000))); else setTimeout(poll, 50); }})(); }})"
        );
        self.eval(&js);
    }
}
