//! `threatflow mark` and `threatflow unblock`: control updates appended to a followed file or sent
//! to the marks topic.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::ingest::mapping::RecordFormat;
use super::options::KafkaArgs;
use super::options::parse_time;

/// `threatflow mark`.
#[derive(Debug, Args)]
pub struct MarkArgs {
    /// The event to mark.
    pub event_id: String,
    /// Files where the event is (JSON lines; see `--format`).
    #[arg(long, required_unless_present = "remove")]
    pub input: Vec<PathBuf>,
    /// Record format of the inputs: `canonical`, `auto` or a mapping's name.
    #[arg(long, default_value = "canonical")]
    pub format: String,
    /// The fingerprint's fields (canonical names or the record's own fields).
    #[arg(long, value_delimiter = ',', default_values_t = crate::detect::marks::DEFAULT_FIELDS.map(String::from))]
    pub fields: Vec<String>,
    /// Event time from which the mark applies (ms or RFC 3339; default: just after the event).
    #[arg(long, value_parser = parse_time)]
    pub effective_from: Option<crate::event::Time>,
    /// Remove the event's mark from `--effective-from` on instead.
    #[arg(long, requires = "effective_from")]
    pub remove: bool,
    /// Append to this marks file (what `--marks FILE` follows).
    #[arg(long, conflicts_with = "kafka")]
    pub to: Option<PathBuf>,
    /// The marks topic's name (with `--kafka`).
    #[arg(long, default_value = "marks")]
    pub topic: String,
    /// Kafka connection (the marks topic).
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// `threatflow unblock`.
#[derive(Debug, Args)]
pub struct UnblockArgs {
    /// The user.
    pub user: String,
    /// Event time from which the user is unblocked (ms or RFC 3339).
    #[arg(long, value_parser = parse_time)]
    pub effective_from: crate::event::Time,
    /// Append to this marks file (what `--marks FILE` follows).
    #[arg(long, conflicts_with = "kafka")]
    pub to: Option<PathBuf>,
    /// The marks topic's name (with `--kafka`).
    #[arg(long, default_value = "marks")]
    pub topic: String,
    /// Kafka connection (the marks topic).
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

/// Appends a control line to a followed file, or sends it to a control topic.
pub(super) fn send_control(line: &str, to: Option<&std::path::Path>, kafka: &KafkaArgs, topic: &str) -> Result<()> {
    match (to, kafka.config()?) {
        (Some(path), _) => {
            // One write of a whole line with O_APPEND: a follower never reads half an update.
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            file.write_all(format!("{line}\n").as_bytes()).with_context(|| format!("appending to {}", path.display()))?;
            file.sync_data().with_context(|| format!("syncing {}", path.display()))
        }
        (None, Some(kafka)) => {
            let record = kafka.control_key.as_ref().map_or_else(|| line.to_string(), |key| key.sign(line));
            crate::kafka::tools::send_one(&kafka, topic, record.as_bytes())
        }
        (None, None) => anyhow::bail!("say where to send it: --to FILE or --kafka BROKERS"),
    }
}

pub(super) fn mark(args: MarkArgs) -> Result<()> {
    use crate::detect::marks::{Mark, MarkUpdate};
    let update = if args.remove {
        MarkUpdate { effective_from: args.effective_from.unwrap_or_default(), ..MarkUpdate::removal(format!("mark:{}", args.event_id)) }
    } else {
        let format = RecordFormat::parse(&args.format, None)?;
        let inputs: Vec<&std::path::Path> = args.input.iter().map(PathBuf::as_path).collect();
        let event = crate::detect::marks::find_event(&inputs, &args.event_id, &format)?;
        let fields: Vec<&str> = args.fields.iter().map(String::as_str).collect();
        let mut mark = Mark::of(&event, &fields);
        if let Some(at) = args.effective_from {
            mark.effective_from = at;
        }
        MarkUpdate::of(&mark)
    };
    let line = serde_json::to_string(&update)?;
    send_control(&line, args.to.as_deref(), &args.kafka, &args.topic)?;
    eprintln!("sent {line}");
    Ok(())
}

pub(super) fn unblock(args: UnblockArgs) -> Result<()> {
    let line = serde_json::to_string(&crate::detect::marks::MarkUpdate::unblock(&args.user, args.effective_from))?;
    send_control(&line, args.to.as_deref(), &args.kafka, &args.topic)?;
    eprintln!("sent {line}");
    Ok(())
}
