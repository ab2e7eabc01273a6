//! Alerts delivered where analysts work: each `--alerts-to` destination (a generic JSON webhook,
//! a Slack or a Microsoft Teams incoming webhook) gets every alert of the alerts file by HTTP POST.
//!
//! The alerts file is the outbox. The job writes it exactly once (cut back and written again,
//! byte for byte, after a restore); one thread per destination reads its whole lines from a
//! cursor, posts them in batches under a rate limit, retries failures with exponential backoff
//! (a `Retry-After` is honoured), and sets aside in the undelivered file what the retry budget or
//! a refusal (4xx) could not deliver. The cursor is kept in the checkpoint directory once a batch
//! is delivered or set aside, so a killed job re-sends at most the batches in flight: every alert
//! arrives at least once, and a duplicate (only across a kill) carries the same `decision_id`,
//! the idempotency key a receiver drops it by (also sent as the `Idempotency-Key` header, the
//! batch's ids hashed).
//!
//! Destination URLs hold secrets (a Slack webhook's path is its credential): they come from a
//! file or the environment as well as the command line, and logs and files name a destination
//! only by its scheme, host and a digest.
//!
//! ```
//! use threatflow::output::webhooks::{Destination, BodyFormat};
//!
//! let slack: Destination = "slack=https://hooks.slack.com/services/T0/B0/secret".parse()?;
//! assert_eq!(slack.format, BodyFormat::Slack);
//! assert!(slack.to_string().starts_with("slack https://hooks.slack.com/… ("));
//! assert!(!slack.to_string().contains("secret"));
//! let alert = serde_json::json!({"decision_id": "d1", "user": "ana", "severity": "high", "verdict": "threat", "rules": ["r1"]});
//! let body = slack.format.body(&[alert]);
//! assert!(body["text"].as_str().unwrap().contains("ana"));
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// The shape of the bodies posted to a destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// `{"source": "threatflow", "alerts": [alert, …]}`: the alerts as the alerts file has them.
    Json,
    /// A Slack incoming-webhook message: a line per alert in `text`.
    Slack,
    /// A Microsoft Teams incoming-webhook message: an Adaptive Card with a line per alert.
    Teams,
}

impl BodyFormat {
    /// The body posting `alerts`.
    pub fn body(self, alerts: &[Value]) -> Value {
        match self {
            BodyFormat::Json => json!({"source": "threatflow", "alerts": alerts}),
            BodyFormat::Slack => {
                let lines: Vec<String> = alerts.iter().map(|a| format!("• {}", summary(a, "*", "`"))).collect();
                json!({"text": format!("threatflow: {} alert{}\n{}", alerts.len(), plural(alerts.len()), lines.join("\n"))})
            }
            BodyFormat::Teams => {
                let mut body = vec![json!({"type": "TextBlock", "weight": "Bolder", "size": "Medium",
                    "text": format!("threatflow: {} alert{}", alerts.len(), plural(alerts.len()))})];
                body.extend(alerts.iter().map(|a| json!({"type": "TextBlock", "wrap": true, "text": summary(a, "**", "`")})));
                json!({"type": "message", "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4", "body": body}
                }]})
            }
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// One line on an alert for a chat message: severity, verdict, user, why, and its decision id
/// (from an alert as JSON or as an OCSF finding).
fn summary(alert: &Value, bold: &str, code: &str) -> String {
    let text = |names: &[&str]| names.iter().find_map(|n| alert.pointer(n)?.as_str()).unwrap_or("?").to_string();
    let mut why: Vec<String> = alert["rules"].as_array().into_iter().flatten().filter_map(|r| r.as_str().map(str::to_string)).collect();
    if let Some(score) = alert["score"].as_f64() {
        why.push(format!("model score {score:.2}"));
    }
    for hit in alert["intel"].as_array().into_iter().flatten() {
        why.push(format!("indicator {}", hit["indicator"].as_str().unwrap_or("?")));
    }
    if why.is_empty() {
        why.push(alert.pointer("/finding_info/title").and_then(Value::as_str).unwrap_or("flagged").to_string());
    }
    format!(
        "{bold}{}{bold} {} {code}{}{code}: {} ({code}{}{code})",
        text(&["/severity"]).to_lowercase(),
        text(&["/verdict", "/unmapped/verdict"]),
        text(&["/user", "/evidences/0/actor/user/name"]),
        why.join(", "),
        crate::output::alert_decision_id(alert).unwrap_or("?")
    )
}

/// Where alerts are posted: `[json=|slack=|teams=]URL`.
#[derive(Clone)]
pub struct Destination {
    /// The URL (a secret: never logged).
    url: String,
    /// The bodies' shape.
    pub format: BodyFormat,
}

impl std::str::FromStr for Destination {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Destination> {
        let text = text.trim();
        let (format, url) = match text.split_once('=') {
            Some(("json", url)) => (BodyFormat::Json, url),
            Some(("slack", url)) => (BodyFormat::Slack, url),
            Some(("teams", url)) => (BodyFormat::Teams, url),
            _ => (BodyFormat::Json, text),
        };
        let uri = url.parse::<ureq::http::Uri>().ok();
        let http = uri.as_ref().is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty()));
        if !http {
            bail!("an alert destination is [json=|slack=|teams=]http(s)://HOST/…, not {:?}", redact(url));
        }
        Ok(Destination { url: url.to_string(), format })
    }
}

impl Destination {
    /// A name for files and metrics: a digest of the destination.
    pub fn key(&self) -> String {
        use sha2::Digest;
        let format = format!("{:?}", self.format);
        hex::encode(&sha2::Sha256::digest(format!("{format}\n{}", self.url).as_bytes())[..8])
    }
}

/// A URL without its path and query: the scheme and host.
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{scheme}://{host}/…")
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = match self.format {
            BodyFormat::Json => "json",
            BodyFormat::Slack => "slack",
            BodyFormat::Teams => "teams",
        };
        write!(f, "{format} {} ({})", redact(&self.url), self.key())
    }
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Destination({self})")
    }
}

/// How alerts are delivered.
#[derive(Clone, Debug)]
pub struct DeliverySpec {
    /// Where.
    pub destinations: Vec<Destination>,
    /// Alerts per request, at most.
    pub batch: usize,
    /// Requests per second per destination, at most.
    pub rate: f64,
    /// Attempts per batch before it is set aside.
    pub attempts: u32,
    /// One request's time limit.
    pub timeout: Duration,
    /// What could not be delivered, as JSON lines `{destination, error, alert}`.
    pub undelivered: PathBuf,
}

/// The delivery threads of a job, one per destination.
pub struct Deliveries {
    done: Arc<AtomicBool>,
    threads: Vec<(Destination, JoinHandle<Result<Delivered>>)>,
}

/// What a destination got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Alerts delivered.
    pub alerts: u64,
    /// Alerts set aside in the undelivered file.
    pub undelivered: u64,
}

/// Where a destination's cursor is kept (`cursors`: a directory in the checkpoint directory).
fn cursor_path(cursors: &Path, destination: &Destination) -> PathBuf {
    cursors.join(format!("{}.offset", destination.key()))
}

impl Deliveries {
    /// Starts delivering `alerts` (a file the job writes) to each destination. A job resumed from
    /// a checkpoint that recorded `restored` bytes of the alerts file starts from the cursors in
    /// `cursors`, but not after those bytes: what follows them is written again, and may differ
    /// (another version, other rules), so it is posted again. A job that starts afresh starts
    /// from the beginning (the cursors of an earlier run are removed). `stop` (a signal) ends the
    /// deliveries after the batch in flight when their cursors are kept.
    pub fn start(spec: &DeliverySpec, alerts: &Path, cursors: Option<&Path>, restored: Option<u64>, stop: Arc<AtomicBool>) -> Result<Deliveries> {
        // Checked once, before any thread starts.
        if !(spec.rate.is_finite() && spec.rate >= 0.001) || spec.batch == 0 || spec.attempts == 0 {
            bail!("alert delivery needs a rate of at least 0.001 requests per second, and a positive batch and number of attempts");
        }
        if let Some(dir) = cursors {
            if restored.is_none() && dir.exists() {
                std::fs::remove_dir_all(dir).with_context(|| format!("removing the old delivery cursors {}", dir.display()))?;
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let done = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for destination in &spec.destinations {
            let cursor = cursors.map(|dir| cursor_path(dir, destination));
            let start = match &cursor {
                Some(path) if path.exists() => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    let at = text.trim().parse::<u64>().with_context(|| format!("{} is not an offset", path.display()))?;
                    at.min(restored.unwrap_or(0))
                }
                _ => 0,
            };
            let mut courier = Courier::new(spec, destination.clone(), alerts.to_path_buf(), cursor, start, (Arc::clone(&done), Arc::clone(&stop)))?;
            let name = format!("alerts-to-{}", destination.key());
            let shown = destination.to_string();
            let run = move || {
                let result = courier.run();
                if let Err(error) = &result {
                    tracing::error!(destination = %shown, "alert delivery stopped: {error:#}");
                }
                result
            };
            let thread = std::thread::Builder::new().name(name).spawn(run).context("starting an alert delivery thread")?;
            tracing::info!(destination = %destination, from = start, "delivering alerts");
            threads.push((destination.clone(), thread));
        }
        Ok(Deliveries { done, threads })
    }

    /// Says the alerts file is complete and waits until every destination has delivered it or
    /// set aside what it could not.
    pub fn finish(self) -> Result<()> {
        self.done.store(true, Ordering::Release);
        for (destination, thread) in self.threads {
            let delivered = thread.join().map_err(|_| anyhow::anyhow!("the delivery thread of {destination} panicked"))??;
            tracing::info!(destination = %destination, alerts = delivered.alerts, undelivered = delivered.undelivered, "alerts delivered");
        }
        Ok(())
    }
}

/// One destination's delivery: reads the alerts file from its cursor and posts it.
struct Courier {
    destination: Destination,
    agent: ureq::Agent,
    alerts: PathBuf,
    cursor_file: Option<PathBuf>,
    offset: u64,
    done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    batch: usize,
    attempts: u32,
    interval: Duration,
    next_request: Instant,
    undelivered: PathBuf,
    delivered: Delivered,
}

impl Courier {
    fn new(
        spec: &DeliverySpec,
        destination: Destination,
        alerts: PathBuf,
        cursor_file: Option<PathBuf>,
        offset: u64,
        (done, stop): (Arc<AtomicBool>, Arc<AtomicBool>),
    ) -> Result<Courier> {
        use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
        let tls = TlsConfig::builder().provider(TlsProvider::NativeTls).root_certs(RootCerts::PlatformVerifier).build();
        let config = ureq::Agent::config_builder().timeout_global(Some(spec.timeout)).http_status_as_error(false).tls_config(tls).build();
        Ok(Courier {
            destination,
            agent: config.into(),
            alerts,
            cursor_file,
            offset,
            done,
            stop,
            batch: spec.batch,
            attempts: spec.attempts,
            interval: Duration::from_secs_f64(1.0 / spec.rate),
            next_request: Instant::now(),
            undelivered: spec.undelivered.clone(),
            delivered: Delivered::default(),
        })
    }

    /// Delivers until the job is done and every whole line of the file is delivered.
    fn run(&mut self) -> Result<Delivered> {
        loop {
            // A stopped job with kept cursors resumes its deliveries when it restarts.
            if self.stop.load(Ordering::Relaxed) && self.cursor_file.is_some() {
                return Ok(self.delivered);
            }
            // Read `done` first: a file complete before it was set is read whole below.
            let done = self.done.load(Ordering::Acquire);
            let (lines, end) = self.read_batch()?;
            if lines.is_empty() {
                if done {
                    return Ok(self.delivered);
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            self.deliver(&lines)?;
            self.offset = end;
            self.save_cursor()?;
        }
    }

    /// Up to `batch` whole lines from the cursor, and the offset after them. (After a restore the
    /// job may have cut the file back below the cursor: it writes the same bytes again, and
    /// until it has, nothing is read.)
    fn read_batch(&self) -> Result<(Vec<Value>, u64)> {
        let mut file = match File::open(&self.alerts) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), self.offset)),
            Err(error) => return Err(error).with_context(|| format!("opening {}", self.alerts.display())),
        };
        let length = file.metadata().with_context(|| format!("reading {}", self.alerts.display()))?.len();
        if length <= self.offset {
            return Ok((Vec::new(), self.offset));
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut reader = BufReader::new(file);
        let (mut lines, mut end, mut line) = (Vec::new(), self.offset, String::new());
        while lines.len() < self.batch {
            line.clear();
            let read = reader.read_line(&mut line).with_context(|| format!("reading {}", self.alerts.display()))?;
            if read == 0 || !line.ends_with('\n') {
                break;
            }
            let alert: Value = serde_json::from_str(&line).with_context(|| format!("{} at byte {end} is not an alert", self.alerts.display()))?;
            lines.push(alert);
            end += read as u64;
        }
        Ok((lines, end))
    }

    /// Posts `alerts` until it is accepted, refused or the attempts are spent; sets aside what
    /// was not delivered.
    fn deliver(&mut self, alerts: &[Value]) -> Result<()> {
        let body = self.destination.format.body(alerts).to_string();
        let key = idempotency_key(alerts);
        let metrics = &crate::metrics::METRICS;
        let label = [self.destination.key()];
        let mut backoff = Duration::from_millis(250);
        let mut error = String::new();
        for attempt in 1..=self.attempts {
            let now = Instant::now();
            if self.next_request > now {
                std::thread::sleep(self.next_request - now);
            }
            self.next_request = Instant::now() + self.interval;
            let (outcome, retry_after) = self.post(&body, &key);
            match outcome {
                Ok(()) => {
                    self.delivered.alerts += alerts.len() as u64;
                    metrics.alerts_delivered.with_label_values(&[label[0].as_str(), "delivered"]).inc_by(alerts.len() as u64);
                    return Ok(());
                }
                Err(Failure::Refused(reason)) => {
                    error = reason;
                    break;
                }
                Err(Failure::Retry(reason)) => {
                    metrics.alerts_delivered.with_label_values(&[label[0].as_str(), "retried"]).inc_by(alerts.len() as u64);
                    tracing::warn!(destination = %self.destination, attempt, "delivering {} alerts failed: {reason}", alerts.len());
                    error = reason;
                    if attempt < self.attempts {
                        std::thread::sleep(retry_after.unwrap_or(backoff).min(Duration::from_secs(60)));
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        }
        tracing::error!(destination = %self.destination, "{} alerts set aside in {}: {error}", alerts.len(), self.undelivered.display());
        metrics.alerts_delivered.with_label_values(&[label[0].as_str(), "undelivered"]).inc_by(alerts.len() as u64);
        self.set_aside(alerts, &error)?;
        self.delivered.undelivered += alerts.len() as u64;
        Ok(())
    }

    /// One POST: accepted, to be retried (and after how long, when the receiver said), or refused.
    fn post(&self, body: &str, key: &str) -> (Result<(), Failure>, Option<Duration>) {
        let request = self.agent.post(&self.destination.url).header("Content-Type", "application/json").header("Idempotency-Key", key);
        let response = match request.send(body) {
            Ok(response) => response,
            // Connections refused or reset, timeouts, names not found: the receiver may come back.
            Err(
                error @ (ureq::Error::Io(_)
                | ureq::Error::Timeout(_)
                | ureq::Error::HostNotFound
                | ureq::Error::ConnectionFailed
                | ureq::Error::Protocol(_)
                | ureq::Error::BodyStalled),
            ) => return (Err(Failure::Retry(error.to_string())), None),
            // A certificate refused, a redirect to elsewhere…: another attempt fails the same way.
            Err(ureq::Error::BadUri(_)) => return (Err(Failure::Refused("bad URI".into())), None),
            Err(error) => return (Err(Failure::Refused(error.to_string())), None),
        };
        let status = response.status();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
        match status.as_u16() {
            200..=299 => (Ok(()), None),
            408 | 425 | 429 | 500..=599 => (Err(Failure::Retry(format!("HTTP {status}"))), retry_after.map(Duration::from_secs)),
            _ => (Err(Failure::Refused(format!("HTTP {status}"))), None),
        }
    }

    /// Appends `alerts` to the undelivered file, synced before the cursor moves past them.
    fn set_aside(&self, alerts: &[Value], error: &str) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.undelivered)
            .with_context(|| format!("opening {}", self.undelivered.display()))?;
        let destination = self.destination.to_string();
        let mut text = String::new();
        for alert in alerts {
            text.push_str(&json!({"destination": destination, "error": error, "alert": alert}).to_string());
            text.push('\n');
        }
        file.write_all(text.as_bytes()).and_then(|()| file.sync_data()).with_context(|| format!("writing {}", self.undelivered.display()))
    }

    /// Records the cursor (written aside, synced, then renamed in place).
    fn save_cursor(&self) -> Result<()> {
        let Some(path) = &self.cursor_file else { return Ok(()) };
        let temporary = path.with_extension("offset.new");
        let mut file = File::create(&temporary).with_context(|| format!("writing {}", temporary.display()))?;
        file.write_all(self.offset.to_string().as_bytes()).and_then(|()| file.sync_data()).with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, path).with_context(|| format!("renaming {}", temporary.display()))
    }
}

/// Why a request did not deliver.
enum Failure {
    /// Worth another attempt (no answer, 408, 425, 429, 5xx).
    Retry(String),
    /// The receiver refused the alerts (another 4xx): another attempt would be refused too.
    Refused(String),
}

/// The `Idempotency-Key` of a batch: its alerts' decision ids, hashed (each alert carries its
/// own in the body too).
fn idempotency_key(alerts: &[Value]) -> String {
    let ids: Vec<&str> = alerts.iter().map(|a| crate::output::alert_decision_id(a).unwrap_or("")).collect();
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(ids.join("\n").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_never_show_their_secrets() {
        let teams: Destination = "teams=https://user:pw@example.webhook.office.com/webhookb2/secret?x=1".parse().unwrap();
        assert_eq!(teams.format, BodyFormat::Teams);
        let shown = format!("{teams} {teams:?}");
        assert!(!shown.contains("secret") && !shown.contains("pw"), "{shown}");
        let plain: Destination = "http://127.0.0.1:9/hook".parse().unwrap();
        assert_eq!(plain.format, BodyFormat::Json);
        assert!("ftp://x".parse::<Destination>().is_err());
        assert_ne!(plain.key(), teams.key());
    }

    #[test]
    fn bodies_carry_every_alert() {
        let alerts = [
            json!({"decision_id": "d1", "user": "ana", "severity": "high", "verdict": "threat", "rules": ["r1"], "score": 0.9}),
            json!({"decision_id": "d2", "user": "bo", "severity": "low", "verdict": "blocked", "rules": []}),
        ];
        let generic = BodyFormat::Json.body(&alerts);
        assert_eq!(generic["alerts"].as_array().unwrap().len(), 2);
        assert_eq!(generic["alerts"][1]["decision_id"], "d2");
        let teams = BodyFormat::Teams.body(&alerts);
        let lines = &teams["attachments"][0]["content"]["body"];
        assert_eq!(lines.as_array().unwrap().len(), 3);
        assert!(lines[1]["text"].as_str().unwrap().contains("r1, model score 0.90"), "{lines}");
        let slack = BodyFormat::Slack.body(&alerts);
        assert_eq!(slack["text"].as_str().unwrap().lines().count(), 3);
        assert_ne!(idempotency_key(&alerts[..1]), idempotency_key(&alerts));
    }
}
