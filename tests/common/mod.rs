//! Helpers shared by the integration tests: running the binary, reading JSON lines, free ports.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// The `threatflow` binary, logging warnings only.
pub fn threatflow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_threatflow"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Asserts that a run succeeded, showing its output when it did not.
pub fn ok(output: Output) -> Output {
    assert!(
        output.status.success(),
        "threatflow failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Parses JSON lines.
pub fn parse_lines(text: &str) -> Vec<Value> {
    text.lines().filter(|l| !l.is_empty()).map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// Reads a JSON-lines file.
pub fn lines(path: &Path) -> Vec<Value> {
    parse_lines(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// `n` ports free on loopback right now.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|l| l.local_addr().expect("addr").port()).collect()
}

/// Runs a command to completion like `Command::output`, but kills it and fails the test if it is
/// still running after `limit` (a hung job must fail the test, not stall CI).
pub fn output_within(command: &mut std::process::Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let (stdout, stderr) = (stdout.join().expect("stdout"), stderr.join().expect("stderr"));
    match status {
        Some(status) => Output { status, stdout, stderr },
        None => panic!("still running after {limit:?}, killed\nstderr: {}", String::from_utf8_lossy(&stderr)),
    }
}

/// A deterministic pseudo-random sequence (splitmix64), so that a failing seed can be rerun.
pub fn random(seed: u64) -> impl Iterator<Item = u64> {
    let mut state = seed;
    std::iter::repeat_with(move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// The checkpoint files in `dir`, oldest first (none while it does not exist).
pub fn checkpoint_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "bin")).collect())
        .unwrap_or_default();
    files.sort();
    files
}

/// Waits until `dir` holds at least `n` checkpoint files (30 s at most).
pub fn wait_for_checkpoints(dir: &Path, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while checkpoint_files(dir).len() < n {
        assert!(std::time::Instant::now() < deadline, "fewer than {n} checkpoints in {} after 30 s", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Starts the command (its output discarded), runs `wait`, then kills it with SIGKILL if it is
/// still running; returns whether it had finished by itself.
pub fn run_and_kill(command: &mut std::process::Command, wait: impl FnOnce()) -> bool {
    use std::process::Stdio;
    let mut child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    wait();
    let finished = child.try_wait().expect("wait").is_some();
    if !finished {
        child.kill().expect("kill -9");
    }
    let _ = child.wait();
    finished
}

/// The Kafka-compatible broker the Kafka tests start through `scripts/broker`: on PATH, or where
/// `cargo install` put it (`$CARGO_HOME/bin`, `~/.cargo/bin`; `scripts/broker` looks there too).
/// `scripts/test` installs it; a test never does, and fails at once without it.
pub fn nisshi() -> std::path::PathBuf {
    let cargo_bins = [std::env::var_os("CARGO_HOME").map(|c| std::path::PathBuf::from(c).join("bin")), home().map(|h| h.join(".cargo/bin"))];
    installed("nisshi", cargo_bins.into_iter().flatten()).expect("nisshi not found on PATH or in ~/.cargo/bin: run scripts/test (it installs it)")
}

/// The S3-compatible server the model-location tests start (moto's `moto_server`): on PATH, or where
/// `pip install --user` put it (`~/.local/bin`). `scripts/test` installs it; a test never does, and
/// fails at once without it.
pub fn moto_server() -> std::path::PathBuf {
    installed("moto_server", home().map(|h| h.join(".local/bin")))
        .expect("moto_server not found on PATH or in ~/.local/bin: run scripts/test (it installs it)")
}

fn home() -> Option<std::path::PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(std::path::PathBuf::from)
}

/// The executable `name` in a directory of PATH, else in one of `also`.
fn installed(name: &str, also: impl IntoIterator<Item = std::path::PathBuf>) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(also)
        .map(|dir| dir.join(name))
        .find(|file| std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// `GET path` on loopback `port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// The samples of a Prometheus text page: `name{labels}` to value.
pub fn metric_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(name, value)| (name.to_string(), value.parse().unwrap_or(f64::NAN))))
        .collect()
}
