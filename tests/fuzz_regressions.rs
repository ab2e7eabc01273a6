//! Every input the fuzzer (`experiments/fuzz.rs`) found crashing a parser, kept in `tests/fuzz/`,
//! runs through its target again: none may panic.

#[path = "../experiments/fuzz_targets.rs"]
mod fuzz_targets;

#[test]
fn kept_crashes_no_longer_crash() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for target in fuzz_targets::targets() {
        let dir = root.join("tests/fuzz").join(target.name);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let input = std::fs::read(&path).expect("a kept input");
            eprintln!("{}", path.display());
            (target.run)(&input);
            replayed += 1;
        }
    }
    eprintln!("{replayed} kept inputs replayed");
}

/// The seeds themselves parse without a panic, so that the fuzzer starts from working inputs.
#[test]
fn every_target_has_seeds_that_run() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for target in fuzz_targets::targets() {
        let seeds = fuzz_targets::seeds(target.name, root);
        assert!(seeds.len() >= 2, "{}: {} seeds", target.name, seeds.len());
        for seed in &seeds {
            (target.run)(seed);
        }
    }
}
