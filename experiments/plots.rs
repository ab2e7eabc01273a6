//! Turns the results `experiments/benchmarks.sh` collects (in `DIR`, default `target/benchmarks`)
//! into `docs/benchmarks/*.svg` and `BENCHMARKS.md`.
//!
//! ```text
//! cargo run --release --example plots -- target/benchmarks
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde_json::Value;

fn read_lines(path: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).context("a JSON line")).collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

const COLORS: [RGBColor; 4] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];

/// Latency CCDF at about half of saturation, per worker count (log-log).
fn ccdf_plot(path: &Path, series: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_x = series.iter().flat_map(|(_, s)| s.iter().map(|p| p.0)).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency CCDF at about half of saturation", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0.1f64..max_x * 1.2).log_scale(), (1e-4f64..1.0).log_scale())?;
    chart.configure_mesh().x_desc("latency (ms)").y_desc("fraction of events at or above").draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = points.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0).copied().collect();
        chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?.label(name.clone()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
        });
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// p50 and p99 latency against the offered rate, per worker count.
fn load_plot(path: &Path, sweeps: &[(usize, Vec<Value>)]) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_rate = sweeps.iter().flat_map(|(_, s)| s.iter().map(|r| f(&r["offered_per_second"]))).fold(1.0, f64::max);
    let max_latency = sweeps.iter().flat_map(|(_, s)| s.iter().map(|r| f(&r["latency_ms"]["p99"]))).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("Latency vs offered load (open loop)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((10_000f64..max_rate * 1.5).log_scale(), (0.1f64..max_latency * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered events/s")
        .y_desc("latency (ms)")
        .x_labels(5)
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .draw()?;
    for (i, (workers, sweep)) in sweeps.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        for (quantile, dashed) in [("p50", false), ("p99", true)] {
            let points: Vec<(f64, f64)> =
                sweep.iter().map(|r| (f(&r["offered_per_second"]), f(&r["latency_ms"][quantile]).max(0.1))).collect();
            let style = if dashed { color.mix(0.6).stroke_width(2) } else { color.stroke_width(2) };
            chart
                .draw_series(LineSeries::new(points.clone(), style))?
                .label(format!("-w {workers} {quantile}"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
        }
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Events per second against workers, per workload.
fn throughput_plot(path: &Path, runs: &[Value]) -> Result<()> {
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = runs.iter().map(|r| f(&r["events_per_second"])).fold(1.0, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption("Throughput vs workers", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5f64..2.5, 0f64..max * 1.15 / 1e6)?;
    chart.configure_mesh().x_desc("workers").y_desc("million events/s").x_labels(3).draw()?;
    for (i, workload) in ["threat", "flink-compare"].into_iter().enumerate() {
        let color = COLORS[i];
        let points: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r["workload"] == workload)
            .map(|r| (f(&r["workers"]), f(&r["events_per_second"]) / 1e6))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(workload)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, color.filled())))?;
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).position(SeriesLabelPosition::UpperLeft).draw()?;
    root.present()?;
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {memory} memory")
}

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "target/benchmarks".into()));
    let plots = Path::new("docs/benchmarks");
    std::fs::create_dir_all(plots)?;
    let throughput = read_lines(&dir.join("throughput.jsonl"))?;
    let sweeps: Vec<(usize, Vec<Value>)> =
        [1, 2].into_iter().map(|w| Ok((w, read_lines(&dir.join(format!("sweep-w{w}.jsonl")))?))).collect::<Result<_>>()?;
    let memory = read_lines(&dir.join("memory.jsonl"))?;
    let kafka = std::fs::read_to_string(dir.join("kafka.txt")).unwrap_or_default();

    // Half of saturation: the highest rate whose achieved rate kept up, halved, rounded to the sweep.
    // Per worker count: the CCDF's label, its points, and the saturation rate.
    type HalfLoad = (String, Vec<(f64, f64)>, f64);
    let half: Vec<HalfLoad> = sweeps
        .iter()
        .filter_map(|(w, sweep)| {
            let kept_up = sweep.iter().filter(|r| f(&r["achieved_per_second"]) >= 0.95 * f(&r["offered_per_second"]) && f(&r["latency_ms"]["p99"]) <= 1000.0);
            let saturation = kept_up.map(|r| f(&r["offered_per_second"])).fold(0.0, f64::max);
            let at = sweep.iter().rfind(|r| f(&r["offered_per_second"]) <= saturation / 2.0 + 1.0).or(sweep.first())?;
            let points = at["ccdf"].as_array()?.iter().map(|p| (f(&p[0]), f(&p[1]))).collect();
            Some((format!("-w {w} at {:.0}/s", f(&at["offered_per_second"])), points, saturation))
        })
        .collect();
    ccdf_plot(&plots.join("latency_ccdf.svg"), &half.iter().map(|(n, p, _)| (n.clone(), p.clone())).collect::<Vec<_>>())?;
    load_plot(&plots.join("latency_vs_load.svg"), &sweeps)?;
    throughput_plot(&plots.join("throughput_vs_workers.svg"), &throughput)?;

    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(md, "Regenerated by `experiments/benchmarks.sh` on {} ({}), release build.", chrono_date(), machine())?;
    writeln!(md, "Every figure below comes from that one command; the raw results are in `target/benchmarks/`.\n")?;
    writeln!(md, "## Throughput\n\n![throughput vs workers](docs/benchmarks/throughput_vs_workers.svg)\n")?;
    writeln!(md, "| workload | workers | events | events/s | checks |\n|---|---|---|---|---|")?;
    for r in &throughput {
        let checks = if r["workload"] == "flink-compare" {
            format!("flagged {} per version {} checksumIdx {} checksumUser {}", r["flagged"], r["per_version"], r["checksum_idx"], r["checksum_user"])
        } else {
            format!("{} decisions", r["decisions"])
        };
        writeln!(md, "| {} | {} | {} | {:.0} | {checks} |", r["workload"].as_str().unwrap_or(""), r["workers"], r["events"], f(&r["events_per_second"]))?;
    }
    writeln!(md, "\n`threat`: `threatflow run --users 100000 --events N -w W` (the embedded generator, all nine features, default model and rules). `flink-compare`: `threatflow run --workload flink-compare --events N -w W`, the workload of `../shared/bench/WORKLOAD.md`; its checksums are the reference values of that file (a unit test checks 1M events on 1 and 4 workers).\n")?;
    writeln!(md, "## Latency (open loop)\n\n![latency vs offered load](docs/benchmarks/latency_vs_load.svg)\n![latency CCDF](docs/benchmarks/latency_ccdf.svg)\n")?;
    writeln!(md, "`cargo run --release --example openloop -- --sweep --rate 25000 -w W`: events are due at a fixed rate, stamped with their due millisecond, and their latency runs from the due time to the moment the output frontier passes it (coordinated omission cannot hide a stall).\n")?;
    writeln!(md, "| workers | offered/s | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|---|")?;
    for (w, sweep) in &sweeps {
        for r in sweep {
            let l = &r["latency_ms"];
            writeln!(
                md,
                "| {w} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                f(&r["offered_per_second"]),
                f(&r["achieved_per_second"]),
                f(&l["p50"]),
                f(&l["p90"]),
                f(&l["p99"]),
                f(&l["p999"]),
                f(&l["max"])
            )?;
        }
    }
    for (name, _, saturation) in &half {
        writeln!(md, "\nSaturation (highest rate kept up with, p99 ≤ 1 s): {saturation:.0}/s; the CCDF is {name}.")?;
    }
    writeln!(md, "\n## Memory per active user\n\n| users | events | peak RSS |\n|---|---|---|")?;
    for r in &memory {
        writeln!(md, "| {} | {} | {:.0} MB |", r["users"], r["events"], f(&r["peak_rss_kb"]) / 1024.0)?;
    }
    if let [small, big] = &memory[..] {
        let per_user = (f(&big["peak_rss_kb"]) - f(&small["peak_rss_kb"])) * 1024.0 / (f(&big["users"]) - f(&small["users"])).max(1.0);
        writeln!(md, "\nMarginal cost: {per_user:.0} bytes per additional active user (same events per user, `-w 2`, peak RSS of `threatflow run`).")?;
    }
    writeln!(md, "\n## Through the broker\n\n`experiments/kafka_end_to_end.sh` (nisshi, memory storage, same machine):\n\n```\n{}```", kafka)?;
    std::fs::write("BENCHMARKS.md", md).context("writing BENCHMARKS.md")?;
    eprintln!("wrote BENCHMARKS.md and docs/benchmarks/*.svg");
    Ok(())
}

/// Today's date (UTC), from the system clock.
fn chrono_date() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, 0).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}
