//! Child processes the tests start (the `spendgate` binary, the Python SDK scripts,
//! promtool, chromium): each is killed when its guard is dropped (a failing assertion
//! unwinds through the guard), and every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A child process that is killed (and reaped) on drop.
pub struct Guard {
    child: Child,
    what: String,
}

impl Guard {
    pub fn spawn(cmd: &mut Command) -> Guard {
        let what = format!("{:?}", cmd.get_program());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Guard { child, what }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`TERM`, `HUP`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.id().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{sig} {} failed", self.id());
    }

    /// Waits for the process to exit; panics (and the guard kills it) past `limit`.
    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {limit:?}", self.what);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion with `stdin` fed to it, its output collected; panics (after
/// killing it) past `limit`. Output is read while the process runs, so a large one never
/// blocks the child on a full pipe.
pub fn output_within(cmd: &mut Command, stdin: Option<&[u8]>, limit: Duration) -> Output {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut guard = Guard::spawn(cmd);
    let input = stdin.map(<[u8]>::to_vec);
    let stdin_pipe = guard.child.stdin.take();
    let feeder = std::thread::spawn(move || {
        if let (Some(mut pipe), Some(input)) = (stdin_pipe, input) {
            let _ = pipe.write_all(&input);
        }
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(guard.child.stdout.take().unwrap()));
    let err = drain(Box::new(guard.child.stderr.take().unwrap()));
    let status = guard.wait_within(limit);
    let _ = feeder.join();
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The `spendgate` binary serving a config file on the ports it chose itself (`listen` and
/// `admin.listen` on port 0): the addresses are read from its `spendgate is serving` log line,
/// so no port is released by the test and re-bound by the child. Killed on drop.
pub struct Spendgate {
    pub process: Guard,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Spendgate {
    /// Starts `spendgate --config <config>` with the extra environment; waits (bounded) until
    /// it serves.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Spendgate {
        Spendgate::start_command(Spendgate::command(&[], config, env))
    }

    /// The command that runs `spendgate --config <config>` (behind `wrapper`, e.g. `prlimit
    /// --fsize=N --`, when given) from the config's directory, logging JSON.
    pub fn command(wrapper: &[&str], config: &Path, env: &[(&str, &str)]) -> Command {
        let bin = env!("CARGO_BIN_EXE_spendgate");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        // A relative `store.path` (the default `spendgate.db`) lands beside the config.
        if let Some(dir) = config.parent().filter(|d| !d.as_os_str().is_empty()) {
            cmd.current_dir(dir);
        }
        cmd.arg("--config").arg(config).env("SPENDGATE_LOG_FORMAT", "json").env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts a command from [`Spendgate::command`]; waits (bounded) until it serves.
    pub fn start_command(mut cmd: Command) -> Spendgate {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut process = Guard::spawn(&mut cmd);
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let (stdout, stderr) = (process.child.stdout.take().unwrap(), process.child.stderr.take().unwrap());
        // Both streams are drained for the life of the process (a full pipe would block it)
        // and kept for the failure messages.
        let err_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = err_log.lock();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let out_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["fields"]["message"] == "spendgate is serving" {
                    let addr = |k: &str| v["fields"][k].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                    let _ = tx.send((addr("data_addr"), addr("admin_addr")));
                }
                let mut l = out_log.lock();
                l.push_str(&line);
                l.push('\n');
            }
        });
        // The sender is dropped when stdout closes, i.e. when the process is gone.
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((Some(data), Some(admin))) => Spendgate { process, data, admin, log },
            Ok(_) => panic!("spendgate logged unparsable addresses:\n{}", log.lock()),
            Err(e) => {
                let status = process.exited();
                panic!("spendgate did not start serving ({e}, exit status {status:?}):\n{}", log.lock())
            }
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.data)
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().clone()
    }
}
