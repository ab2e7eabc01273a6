//! What new-terms rules cost: the same history replayed with the shipped threshold rules, and with
//! them and `--new-terms-rules` (50) new-terms rules over combinations of the canonical fields,
//! runs alternated in one period. Prints each run's events/s, the ratio of the medians, and, from
//! the engine's metrics at the end of a run with the rules, the combinations remembered and the
//! bytes of their tables (`threatflow_state_keys` / `threatflow_state_table_bytes` of `new-terms`):
//! the memory per tracked combination.
//!
//! ```text
//! cargo build --release && cargo run --release --example new_terms_cost -- --events 1000000 --runs 3
//! ```

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Events of the generated history.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Its users.
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// New-terms rules added.
    #[arg(long, default_value_t = 50)]
    new_terms_rules: usize,
    /// Runs of each rule set (alternated).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Engine workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Where the history and the rules go.
    #[arg(long, default_value = "target/new-terms-cost")]
    out: PathBuf,
    /// The engine.
    #[arg(long, default_value = "target/release/threatflow")]
    binary: PathBuf,
}

/// The combinations the rules track (canonical fields), and the actions they look at.
const FIELDS: [&[&str]; 10] = [
    &["user", "action"],
    &["user", "country"],
    &["user", "src_ip"],
    &["user", "user_agent"],
    &["user", "resource"],
    &["user", "country", "action"],
    &["user", "user_agent", "country"],
    &["action", "country"],
    &["user", "app"],
    &["src_ip", "user_agent"],
];
const ACTIONS: [Option<&str>; 5] = [None, Some("login"), Some("download"), Some("delete"), Some("share_external")];

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let history = args.out.join("events.jsonl");
    let generated = Command::new(&args.binary)
        .args(["generate", "--users", &args.users.to_string(), "--events", &args.events.to_string(), "--out"])
        .arg(&history)
        .status()
        .context("running the generator")?;
    ensure!(generated.success(), "generate failed");
    let rules = args.out.join("new-terms.jsonl");
    std::fs::write(&rules, new_terms_rules(args.new_terms_rules))?;
    let defaults = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/default.json");

    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut sizes = None;
    for run in 0..args.runs {
        without.push(replay(&args, &history, &[&defaults], false)?.0);
        let (rate, size) = replay(&args, &history, &[&defaults, &rules], run == 0)?;
        with.push(rate);
        sizes = sizes.or(size);
        println!("run {run}: {:.0} events/s without, {:.0} with {} new-terms rules", without[run], with[run], args.new_terms_rules);
    }
    let (a, b) = (median(&mut without), median(&mut with));
    println!("median: {a:.0} vs {b:.0} events/s: {:.2}x the throughput with the new-terms rules", b / a);
    if let Some((keys, bytes)) = sizes {
        println!("new-terms state at the end: {keys} combinations in {bytes} bytes of tables: {:.1} bytes per combination", bytes / keys.max(1.0));
    }
    Ok(())
}

/// `count` new-terms rules, JSON lines: the field combinations crossed with the actions.
fn new_terms_rules(count: usize) -> String {
    (0..count)
        .map(|i| {
            let fields = FIELDS[i % FIELDS.len()];
            let when = match ACTIONS[(i / FIELDS.len()) % ACTIONS.len()] {
                Some(action) => serde_json::json!({"action": [action]}),
                None => serde_json::json!({}),
            };
            let rule = serde_json::json!({"id": format!("nt-{i}"), "when": when, "new_terms": {"fields": fields, "history": "14d", "learning": "1d"}, "severity": "low"});
            format!("{rule}\n")
        })
        .collect()
}

/// Replays the history with `rules`; returns events/s and, when `measure`, the new-terms state's
/// combinations and table bytes at the end (from the metrics, while the engine lingers).
fn replay(args: &Args, history: &Path, rules: &[&Path], measure: bool) -> Result<(f64, Option<(f64, f64)>)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut command = Command::new(&args.binary);
    command.args(["replay", "--input"]).arg(history).arg("--output").arg(args.out.join("decisions.jsonl"));
    command.args(["-w", &args.workers.to_string()]);
    for r in rules {
        command.arg("--rules").arg(r);
    }
    if measure {
        command.args(["--metrics-addr", &format!("127.0.0.1:{port}"), "--linger", "30s"]);
    }
    command.env("RUST_LOG", "warn");
    let started = Instant::now();
    let mut child = command.spawn().context("starting the engine")?;
    let mut sizes = None;
    if measure {
        let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(text) = scrape(address) {
                if figure(&text, "threatflow_job_finished ") == Some(1.0) {
                    let elapsed = started.elapsed();
                    let keys = figure(&text, "threatflow_state_keys{part=\"new-terms\"} ");
                    let bytes = figure(&text, "threatflow_state_table_bytes{part=\"new-terms\"} ");
                    sizes = keys.zip(bytes);
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok((args.events as f64 / elapsed.as_secs_f64(), sizes));
                }
            }
            if child.try_wait()?.is_some() {
                break;
            }
        }
    }
    let status = child.wait()?;
    ensure!(status.success(), "replay failed");
    Ok((args.events as f64 / started.elapsed().as_secs_f64(), sizes))
}

/// The engine's `/metrics` text.
fn scrape(address: std::net::SocketAddr) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// A sample's value, by its name and labels (`prefix` ends with a space).
fn figure(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|v| v.trim().parse().ok())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
