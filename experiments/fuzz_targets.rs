//! What the fuzzer (`experiments/fuzz.rs`) feeds hostile bytes to, and the seeds it mutates: every
//! parser of outside input. `tests/fuzz_regressions.rs` runs the crashes it kept through the
//! same targets.

use std::path::Path;

use threatflow::checkpoint::operator::StatePart;
use threatflow::checkpoint::{decode, encode, Checkpoint, PartitionCheckpoint, PartitionPosition, PartitionStats};
use threatflow::event::{Position, DEFAULT_MAX_RECORD_BYTES};
use threatflow::ingest::mapping::{Mappings, RecordFormat};
use threatflow::ingest::partition::{decode_record, Decoding};

/// What a target runs on one input (a panic is a crash).
pub type Run = Box<dyn Fn(&[u8])>;

/// A fuzz target: its name, and what it runs on one input.
pub struct Target {
    pub name: &'static str,
    pub run: Run,
}

/// Every target.
pub fn targets() -> Vec<Target> {
    let formats: Vec<RecordFormat> = std::iter::once("auto".to_string())
        .chain(Mappings::shipped().expect("the shipped mappings").names().into_iter().map(str::to_string))
        .map(|name| RecordFormat::parse(&name, None).expect("a shipped format"))
        .collect();
    let header = encode(&Checkpoint::default()).expect("an empty checkpoint")[..12].to_vec();
    let key = threatflow::control::signing::ControlKey::new(b"sixteen bytes or more".to_vec()).expect("a key");
    vec![
        Target {
            name: "canonical",
            run: Box::new(|data| {
                let _ = threatflow::event::parse_event(data, DEFAULT_MAX_RECORD_BYTES);
                let decoding = Decoding::default();
                decode_record(data, data.len(), &decoding, Some(1_767_571_200_000), position, &mut Vec::new());
            }),
        },
        Target {
            name: "mappings",
            run: Box::new(move |data| {
                for format in &formats {
                    let decoding = Decoding { format: format.clone(), ..Decoding::default() };
                    decode_record(data, data.len(), &decoding, None, position, &mut Vec::new());
                }
            }),
        },
        Target {
            name: "rules",
            run: Box::new(|data| {
                if let Ok(text) = std::str::from_utf8(data) {
                    let _ = threatflow::detect::rules::parse_sigma_updates(text);
                    let _ = threatflow::detect::rules::parse_rules(text);
                }
            }),
        },
        Target {
            name: "checkpoint",
            run: Box::new(move |data| {
                // As a file, and as a payload behind a valid header (so that it is decoded).
                let _ = decode(data).map(|c| threatflow::output::sinks::restored_positions(&c));
                let mut file = header.clone();
                file.extend_from_slice(&(data.len() as u64).to_le_bytes());
                file.extend_from_slice(&xxhash_rust::xxh3::xxh3_128(data).to_le_bytes());
                file.extend_from_slice(data);
                let _ = decode(&file).map(|c| threatflow::output::sinks::restored_positions(&c));
            }),
        },
        Target {
            name: "control",
            run: Box::new(move |data| {
                let _ = threatflow::control::signing::open(Some(&key), data);
                let _ = threatflow::control::signing::open(None, data);
                let _ = threatflow::detect::model::Model::from_bytes(data, None);
                if let Ok(text) = std::str::from_utf8(data) {
                    let _ = threatflow::detect::marks::parse_update(text);
                }
            }),
        },
        Target {
            name: "intel",
            run: Box::new(|data| {
                if let Ok(text) = std::str::from_utf8(data) {
                    for origin in ["feed.jsonl", "feed.csv"] {
                        let (updates, _) = threatflow::control::intel::parse_indicators(text, origin);
                        let mut log = threatflow::detect::control::ControlLog::default();
                        log.add_indicators(updates);
                    }
                }
            }),
        },
    ]
}

fn position() -> Position {
    Position { source: "fuzz".into(), record: 1, offset: 0 }
}

/// The seeds of a target: real inputs of its kind from the repository.
pub fn seeds(target: &str, root: &Path) -> Vec<Vec<u8>> {
    let files = |dir: &str, ext: &[&str]| -> Vec<Vec<u8>> {
        walk(&root.join(dir)).into_iter().filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| ext.contains(&e))).filter_map(|p| std::fs::read(p).ok()).collect()
    };
    let lines = |files: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        files.iter().flat_map(|f| f.split(|b| *b == b'\n').filter(|l| !l.is_empty() && l.len() < 65_536).map(<[u8]>::to_vec).collect::<Vec<_>>()).collect()
    };
    match target {
        "canonical" => {
            let config = threatflow::ingest::generator::GeneratorConfig { users: 50, events: 300, partitions: 1, ..Default::default() };
            let (parts, _) = threatflow::ingest::generator::generate_all(&config);
            parts.into_iter().flatten().map(|e| e.to_json().into_bytes()).collect()
        }
        "mappings" => {
            let data = files("tests/data", &["json", "jsonl", "ndjson"]);
            let mut seeds = lines(data.clone());
            seeds.extend(data.into_iter().filter(|f| f.len() < 65_536));
            // Text lines: VPC flow logs (and their header) and S3 server access logs.
            seeds.extend(
                [
                    "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status",
                    "2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 1418530010 1418530070 ACCEPT OK",
                    r#"79a59df9 bucket1 [06/Feb/2019:00:00:38 +0000] 192.0.2.3 arn:aws:iam::1:user/ann 3E57427F REST.GET.OBJECT a.jpg "GET /bucket1/a.jpg HTTP/1.1" 200 - 10 10 70 10 "-" "curl/8" - hostid SigV4 ECDHE AuthHeader host TLSv1.2 - -"#,
                ]
                .map(|line| line.as_bytes().to_vec()),
            );
            seeds
        }
        "rules" => {
            let mut seeds = files("rules", &["yml", "yaml", "json"]);
            seeds.retain(|s| s.len() < 65_536);
            seeds
        }
        "checkpoint" => {
            let part = |name: &str, bytes: Vec<u8>| StatePart { name: name.into(), version: 1, bytes };
            let mut checkpoint = Checkpoint { frontier: 1_767_571_200_000, dataflow: "threat".into(), ..Default::default() };
            checkpoint.partitions.insert(
                "file:events.jsonl".into(),
                PartitionCheckpoint {
                    position: PartitionPosition::Bytes { offset: 4096, line: 17 },
                    max_ts: Some(1_767_571_199_000),
                    stats: PartitionStats { partition: "file:events.jsonl".into(), events: 16, rejected: 1, late: 0 },
                    finished: false,
                },
            );
            let sink = threatflow::output::sinks::DecisionSinkPart {
                files: threatflow::output::OutputPositions { decisions: Some(812), ..Default::default() },
                alert_gate: vec![("model".into(), "ann".into(), 1_767_571_100_000)],
            };
            checkpoint.state.push(part("decision-sink", bincode::serialize(&vec![sink]).expect("a part")));
            checkpoint.async_outputs.insert(("decisions".into(), 0), 42);
            let file = encode(&checkpoint).expect("a checkpoint");
            vec![file[36..].to_vec(), file]
        }
        "control" => {
            let key = threatflow::control::signing::ControlKey::new(b"sixteen bytes or more".to_vec()).expect("a key");
            let update = r#"{"version":"v2","uri":"v2.json","sha256":"00","effective_from":5}"#;
            let mark = r#"{"id":"m1","fingerprint":[["user","ann"]],"effective_from":5}"#;
            let mut seeds = vec![key.sign(update).into_bytes(), update.as_bytes().to_vec(), mark.as_bytes().to_vec()];
            seeds.extend(files("models", &["json"]));
            seeds
        }
        "intel" => vec![
            br#"{"type": "cidr", "value": "203.0.113.0/24", "source": "cert", "confidence": 80, "effective_from": "2026-12-01T00:00:00Z", "expires": 1767225600001}"#.to_vec(),
            br#"{"id": "x", "remove": true, "effective_from": 5}"#.to_vec(),
            br#"{"type": "bundle", "id": "bundle--1", "objects": [{"type": "identity", "id": "identity--a", "name": "CERT"}, {"type": "indicator", "id": "indicator--1", "created_by_ref": "identity--a", "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z", "valid_until": "2026-02-01T00:00:00Z", "confidence": 90, "pattern": "[ipv4-addr:value = '198.51.100.7'] OR [domain-name:value = 'evil.example'] OR [file:hashes.'SHA-256' = 'ab12']"}]}"#.to_vec(),
            b"type,value,confidence,source,effective_from,expires\nuser_agent,\"curl/8.0, x\",30,ua,0,\nasn,AS64500,101,a,5,4\n".to_vec(),
        ],
        _ => Vec::new(),
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut paths = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            paths.extend(walk(&path));
        } else {
            paths.push(path);
        }
    }
    paths.sort();
    paths
}
