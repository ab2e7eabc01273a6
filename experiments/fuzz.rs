//! A mutation fuzzer for every parser of outside input (runs on stable Rust, unlike `cargo
//! fuzz`): for each target of `experiments/fuzz_targets.rs` it mutates real seeds (byte flips,
//! insertions of JSON/YAML tokens, deletions, duplications, truncations, splices) for a fixed time,
//! catches panics, keeps each crashing input in `tests/fuzz/TARGET/` (replayed by
//! `tests/fuzz_regressions.rs`), and prints one JSON line per target: executions and crashes.
//!
//! ```text
//! cargo run --release --example fuzz -- --seconds 120 [--target NAME]
//! ```

#[path = "fuzz_targets.rs"]
mod fuzz_targets;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
struct Args {
    /// Time per target.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Only this target.
    #[arg(long)]
    target: Option<String>,
    /// The random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Tokens that parsers treat specially, inserted by the mutator.
const TOKENS: &[&[u8]] = &[
    b"{", b"}", b"[", b"]", b"\"", b"\\", b"\\u0000", b"\\ud800", b":", b",", b"*", b"?", b"|", b"&a ", b"*a", b"!!binary ", b"---\n",
    b"- ", b"\n  ", b"null", b"true", b"-1", b"1e400", b"18446744073709551616", b"9999-12-31T23:59:59Z", b"\"ts\":", b"\"Records\":",
    b"condition: ", b"selection", b"|re", b"|contains|all", b"|base64offset", b"1 of them", b"not ", b"timeframe", b"\xff", b"\xc3\x28",
];

fn mutate(rng: &mut rand_chacha::ChaCha8Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    input.clear();
    input.extend_from_slice(&seeds[rng.random_range(0..seeds.len())]);
    for _ in 0..rng.random_range(1..=4) {
        let at = if input.is_empty() { 0 } else { rng.random_range(0..input.len()) };
        match rng.random_range(0..7) {
            0 if !input.is_empty() => input[at] ^= 1 << rng.random_range(0..8),
            1 => {
                let token = TOKENS[rng.random_range(0..TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            2 if !input.is_empty() => {
                let end = (at + rng.random_range(1..=16)).min(input.len());
                input.drain(at..end);
            }
            3 if !input.is_empty() => {
                let end = (at + rng.random_range(1..=64)).min(input.len());
                let copy = input[at..end].to_vec();
                for _ in 0..rng.random_range(1..=8) {
                    input.splice(at..at, copy.iter().copied());
                }
            }
            4 => input.truncate(at),
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                let from = if other.is_empty() { 0 } else { rng.random_range(0..other.len()) };
                input.splice(at.., other[from..].iter().copied());
            }
            _ if !input.is_empty() => input[at] = rng.random(),
            _ => {}
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Panics are counted, not printed.
    std::panic::set_hook(Box::new(|_| {}));
    for target in fuzz_targets::targets() {
        if args.target.as_deref().is_some_and(|t| t != target.name) {
            continue;
        }
        let seeds = fuzz_targets::seeds(target.name, root);
        anyhow::ensure!(!seeds.is_empty(), "no seeds for {}", target.name);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
        let (mut executions, mut crashes) = (0u64, BTreeSet::new());
        let mut input = Vec::new();
        let started = Instant::now();
        let budget = Duration::from_secs(args.seconds);
        while started.elapsed() < budget {
            mutate(&mut rng, &seeds, &mut input);
            executions += 1;
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(&input))).is_err() {
                let digest = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&input));
                if crashes.insert(digest.clone()) {
                    let dir = root.join("tests/fuzz").join(target.name);
                    std::fs::create_dir_all(&dir)?;
                    std::fs::write(dir.join(format!("{digest}.bin")), &input)?;
                }
            }
        }
        let line = serde_json::json!({
            "target": target.name, "seeds": seeds.len(), "seconds": args.seconds,
            "executions": executions, "executions_per_second": executions as f64 / started.elapsed().as_secs_f64(),
            "crashes": crashes.len(),
        });
        println!("{line}");
    }
    Ok(())
}
