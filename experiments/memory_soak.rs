//! Memory over a long run: this harness feeds the embedded generator's events, at a fixed rate,
//! to `threatflow replay --input /dev/stdin` (the default model and rules, decisions to a file,
//! a checkpoint every 10 s), and samples the engine's resident memory every 10 s. Event time runs
//! about 560 times faster than the clock at 20k events/s, so hour and day windows turn over many
//! times. At the end it fits a line to the samples after the warm-up (the first third) and writes
//! `soak.csv`, `soak.json` (slope in MB per hour, events fed) and `docs/benchmarks/soak-rss.svg`.
//!
//! ```text
//! cargo build --release && cargo run --release --example memory_soak -- --minutes 30 --rate 20000
//! ```
//!
//! (Not through the broker: the test broker's in-memory storage slows down as it grows and could
//! not take 20k records/s for half an hour.)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::io::Write as _;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use plotters::prelude::*;
use threatflow::ingest::generator::{GeneratorConfig, GeneratorPartition};
use threatflow::ingest::partition::{Item, Partition as _};

#[derive(Parser)]
struct Args {
    /// Wall-clock length of the run.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Events per second the producer offers.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Users of the generator.
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// Engine workers.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Where the samples and the summary go.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
    /// Where the plot goes.
    #[arg(long, default_value = "docs/benchmarks/soak-rss.svg")]
    plot: PathBuf,
    /// The engine (a copy keeps the soak running while `target/` is rebuilt).
    #[arg(long, default_value = "target/release/threatflow")]
    binary: PathBuf,
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The resident memory of a process, in MB (`VmRSS` of `/proc/PID/status`).
fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading the engine's /proc status")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb / 1024.0)
}

/// jemalloc's figures in MB (`allocated`, `active`, `resident`), scraped from the engine's
/// `/metrics`: whether a rise is the heap itself or pages the allocator keeps.
fn allocator_mb(metrics: std::net::SocketAddr) -> Result<[f64; 3]> {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(metrics).context("connecting to the engine's metrics")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {metrics}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text).context("reading the engine's metrics")?;
    let figure = |kind: &str| {
        let prefix = format!("threatflow_allocator_bytes{{kind=\"{kind}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse::<f64>().ok()).map(|b| b / 1e6)
    };
    match (figure("allocated"), figure("active"), figure("resident")) {
        (Some(a), Some(b), Some(c)) => Ok([a, b, c]),
        _ => anyhow::bail!("the engine's metrics have no allocator figures"),
    }
}

/// Least-squares slope and intercept of `y` over `x`.
fn fit(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (sx, sy) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (sxy, sxx) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (y - my), b + (x - mx) * (x - mx)));
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (slope, my - slope * mx)
}

fn plot(path: &Path, samples: &[(f64, f64)], heap: &[(f64, f64)], warmup: f64, slope_per_hour: f64, intercept: f64) -> Result<()> {
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_x = samples.iter().map(|s| s.0).fold(1.0, f64::max);
    let max_y = samples.iter().map(|s| s.1).fold(1.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Engine resident memory, slope after warm-up {slope_per_hour:+.1} MB/h"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_x / 60.0, 0.0..max_y)?;
    chart.configure_mesh().x_desc("minutes").y_desc("RSS (MB)").draw()?;
    chart.draw_series(LineSeries::new(samples.iter().map(|(x, y)| (x / 60.0, *y)), RGBColor(31, 119, 180)))?.label("RSS");
    chart.draw_series(LineSeries::new(heap.iter().map(|(x, y)| (x / 60.0, *y)), RGBColor(44, 160, 44)))?.label("heap (jemalloc allocated)");
    let line = [warmup, max_x].map(|x| (x / 60.0, intercept + slope_per_hour / 3600.0 * x));
    chart.draw_series(LineSeries::new(line, RGBColor(214, 39, 40)))?.label("fit after warm-up");
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tf = args.binary.as_path();
    ensure!(tf.exists(), "build first: cargo build --release");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    std::fs::create_dir_all(&args.out)?;
    let work = tempfile::tempdir()?;
    let seconds = args.minutes * 60;
    let mut run = Command::new(tf);
    run.args(["replay", "--input", "/dev/stdin", "--model", "models/default.json", "--rules", "rules/default.json", "-w"])
        .arg(args.workers.to_string())
        .arg("--output")
        .arg(args.out.join("decisions.jsonl"))
        .arg("--checkpoint-dir")
        .arg(work.path().join("checkpoints"))
        .args(["--checkpoint-interval", "10s"])
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(args.out.join("engine.log"))?);
    let mut engine = Running(run.spawn().context("starting the engine")?);
    let pid = engine.0.id();
    let mut stdin = std::io::BufWriter::new(engine.0.stdin.take().context("the engine's standard input")?);

    // One generator partition: its events in time order, as many as the rate asks for.
    let config = GeneratorConfig { users: args.users, events: args.rate * (seconds + 60), partitions: 1, ..GeneratorConfig::default() };
    let mut generator = GeneratorPartition::new(config, 0);
    let mut items = Vec::new();
    let started = Instant::now();
    let (mut fed, mut next_sample) = (0u64, 10.0);
    let mut samples = Vec::new();
    let mut csv = String::from("seconds,rss_mb,allocated_mb,active_mb,resident_mb,events\n");
    let mut heap = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        // Feed what the rate allows by now, in steps of 10 ms.
        let due = (started.elapsed().as_secs_f64() * args.rate as f64) as u64;
        while fed < due {
            if items.is_empty() && !generator.poll(4096, &mut items)? {
                anyhow::bail!("the generator ran out of events");
            }
            for item in items.drain(..) {
                if let Item::Event(event) = item {
                    writeln!(stdin, "{}", event.to_json()).context("feeding the engine")?;
                    fed += 1;
                }
            }
        }
        stdin.flush().context("feeding the engine")?;
        let at = started.elapsed().as_secs_f64();
        if at >= next_sample {
            let rss = rss_mb(pid)?;
            let [allocated, active, resident] = allocator_mb(metrics)?;
            samples.push((at, rss));
            heap.push((at, allocated));
            csv.push_str(&format!("{at:.0},{rss:.1},{allocated:.1},{active:.1},{resident:.1},{fed}\n"));
            eprintln!("{at:>6.0} s  RSS {rss:>7.1} MB  heap {allocated:>7.1} MB  active {active:>7.1} MB  {fed:>10} events fed");
            next_sample += 10.0;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(stdin);
    // The engine decides what it was fed and ends.
    let status = engine.0.wait().context("waiting for the engine")?;
    ensure!(status.success(), "the engine failed: see {}", args.out.join("engine.log").display());
    std::fs::write(args.out.join("soak.csv"), &csv)?;

    let warmup = seconds as f64 / 3.0;
    let steady: Vec<(f64, f64)> = samples.iter().copied().filter(|(x, _)| *x >= warmup).collect();
    ensure!(steady.len() >= 2, "too few samples after the warm-up");
    let (slope, intercept) = fit(&steady);
    let slope_per_hour = slope * 3600.0;
    let heap_steady: Vec<(f64, f64)> = heap.iter().copied().filter(|(x, _)| *x >= warmup).collect();
    let heap_slope_per_hour = fit(&heap_steady).0 * 3600.0;
    let peak = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let summary = serde_json::json!({
        "minutes": args.minutes, "rate": args.rate, "users": args.users, "workers": args.workers,
        "samples": samples.len(), "events_fed": fed, "warmup_seconds": warmup, "peak_rss_mb": peak,
        "rss_at_warmup_mb": steady[0].1, "rss_at_end_mb": steady[steady.len() - 1].1,
        "slope_mb_per_hour": slope_per_hour, "heap_at_end_mb": heap_steady[heap_steady.len() - 1].1,
        "heap_slope_mb_per_hour": heap_slope_per_hour,
    });
    std::fs::write(args.out.join("soak.json"), format!("{summary}\n"))?;
    plot(&args.plot, &samples, &heap, warmup, slope_per_hour, intercept)?;
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn fits_a_line() {
        let (slope, intercept) = super::fit(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]);
        assert!((slope - 2.0).abs() < 1e-12 && (intercept - 1.0).abs() < 1e-12);
    }
}
