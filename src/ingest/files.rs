//! Partitions of newline-delimited JSON records (files and in-memory inputs), or of one JSON
//! document (a provider's array or `{"Records": [...]}` file).

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::checkpoint::PartitionPosition;
use crate::event::{Position, Time};
use crate::ingest::partition::{Decoding, Item, Partition};

/// A buffered reader that can also seek (files, memory).
pub trait SeekBufRead: BufRead + Seek {}
impl<T: BufRead + Seek> SeekBufRead for T {}

/// When an input's records were written.
#[derive(Clone, Copy, Debug)]
enum Written {
    /// Not known (an input in memory): no bound on its events' times.
    Unknown,
    /// At the latest at this time (a regular file's modification time).
    At(Time),
    /// As they are read (a pipe, a device).
    AsRead,
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_millis(time: std::time::SystemTime) -> Time {
    time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis().min(u128::from(Time::MAX)) as Time)
}

/// A partition of newline-delimited JSON records from any reader, or of one JSON document (a
/// provider's pretty-printed array or `{"Records": [...]}` file, read as one record) when the
/// format is not canonical and the first line is not a JSON value by itself.
///
/// Records longer than the limit are skipped to the next newline without being buffered whole;
/// their dead letter keeps the first `limit` bytes. Blank lines are not records.
pub struct JsonLinesPartition {
    name: std::sync::Arc<str>,
    reader: Box<dyn SeekBufRead>,
    decoding: Decoding,
    /// The whole input is one record.
    document: bool,
    /// When the input's records were written, for their plausible times
    /// ([`Decoding::max_future_skew`]).
    written: Written,
    line: u64,
    offset: u64,
    record: Vec<u8>,
}

impl JsonLinesPartition {
    /// Reads `reader`, naming the partition `name`.
    pub fn new(name: impl Into<String>, mut reader: Box<dyn SeekBufRead>, decoding: Decoding) -> Self {
        let document = !decoding.format.is_canonical() && is_document(&mut *reader);
        JsonLinesPartition { name: name.into().into(), reader, decoding, document, written: Written::Unknown, line: 0, offset: 0, record: Vec::new() }
    }

    /// Opens a file. Its records were written at the latest at its modification time; a pipe's
    /// or a device's as they are read.
    pub fn open(path: &Path, decoding: Decoding) -> Result<Self> {
        let (file, metadata) = open_file(path)?;
        Ok(Self::of_file(path, file, &metadata, decoding))
    }

    /// Reads an open file, which `metadata` describes.
    fn of_file(path: &Path, file: std::fs::File, metadata: &std::fs::Metadata, decoding: Decoding) -> Self {
        let written = match metadata.modified() {
            Ok(modified) if metadata.is_file() => Written::At(unix_millis(modified)),
            _ => Written::AsRead,
        };
        let reader: Box<dyn SeekBufRead> = Box::new(BufReader::with_capacity(1 << 20, file));
        JsonLinesPartition { written, ..Self::new(format!("file:{}", path.display()), reader, decoding) }
    }

    /// Opens an input for a source: a regular file as [`JsonLinesPartition::open`] does; a pipe
    /// or a device (standard input) is read on a thread of its own ([`StreamPartition`]), so that
    /// waiting for its next record never stops the worker.
    pub fn open_input(path: &Path, decoding: Decoding) -> Result<Box<dyn Partition>> {
        let (file, metadata) = open_file(path)?;
        if metadata.is_file() {
            return Ok(Box::new(Self::of_file(path, file, &metadata, decoding)));
        }
        let path = path.to_path_buf();
        let stream = StreamPartition::spawn(format!("file:{}", path.display()), move || Self::of_file(&path, file, &metadata, decoding))?;
        Ok(Box::new(stream))
    }

    /// Reads lines from memory (tests, embedding).
    pub fn from_bytes(name: impl Into<String>, bytes: Vec<u8>, decoding: Decoding) -> Self {
        Self::new(name, Box::new(std::io::Cursor::new(bytes)), decoding)
    }

    /// Reads the next record into `self.record` (at most `limit + 1` bytes kept); returns its full
    /// length, or `None` at the end of the input.
    fn next_record(&mut self) -> std::io::Result<Option<usize>> {
        self.record.clear();
        let keep = self.decoding.max_record_bytes + 1;
        let mut total = 0usize;
        let mut any = false;
        loop {
            let buf = self.reader.fill_buf()?;
            if buf.is_empty() {
                return Ok(any.then_some(total));
            }
            any = true;
            let newline = if self.document { None } else { memchr::memchr(b'\n', buf) };
            let (chunk, done) = match newline {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            let room = keep.saturating_sub(self.record.len());
            self.record.extend_from_slice(&chunk[..chunk.len().min(room)]);
            total += chunk.len();
            let consumed = done.unwrap_or(buf.len());
            self.reader.consume(consumed);
            if done.is_some() {
                return Ok(Some(total));
            }
        }
    }
}

/// An input file, open, and its metadata.
fn open_file(path: &Path) -> Result<(std::fs::File, std::fs::Metadata)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening input {}", path.display()))?;
    let metadata = file.metadata().with_context(|| format!("reading the metadata of {}", path.display()))?;
    Ok((file, metadata))
}

/// Whether an input is one JSON document rather than JSON lines: it starts with `[`, or its first
/// line is not a JSON value by itself (a pretty-printed object). Looks at the buffer only.
fn is_document(reader: &mut dyn SeekBufRead) -> bool {
    let Ok(buf) = reader.fill_buf() else { return false };
    let start = buf.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(buf.len());
    match buf.get(start) {
        Some(b'[') => true,
        Some(b'{') => {
            let end = buf[start..].iter().position(|b| *b == b'\n').map_or(buf.len(), |i| start + i);
            serde_json::from_slice::<serde::de::IgnoredAny>(&buf[start..end]).is_err()
        }
        _ => false,
    }
}

impl Partition for JsonLinesPartition {
    fn name(&self) -> String {
        self.name.to_string()
    }

    fn position(&self) -> Option<PartitionPosition> {
        Some(PartitionPosition::Bytes { offset: self.offset, line: self.line })
    }

    fn seek(&mut self, position: &PartitionPosition) -> Result<()> {
        let PartitionPosition::Bytes { offset, line } = *position else { anyhow::bail!("{} resumes from a byte offset", self.name) };
        self.reader.seek(SeekFrom::Start(offset)).with_context(|| format!("seeking {} to byte {offset}", self.name))?;
        self.offset = offset;
        self.line = line;
        Ok(())
    }

    fn poll(&mut self, max: usize, out: &mut Vec<Item>) -> Result<bool> {
        for _ in 0..max {
            let start = self.offset;
            // A line whole in the reader's buffer (nearly every one) is read from there; others
            // are gathered first.
            let whole = match self.document {
                true => None,
                false => memchr::memchr(b'\n', self.reader.fill_buf()?).filter(|&at| at <= self.decoding.max_record_bytes + 1),
            };
            let len = match whole {
                Some(len) => len,
                None => match self.next_record()? {
                    Some(len) => len,
                    None => return Ok(false),
                },
            };
            self.offset += len as u64 + 1;
            self.line += 1;
            let bytes = match whole {
                // (The buffer as it was: filling a buffer that holds bytes reads nothing.)
                Some(len) => &self.reader.fill_buf()?[..len],
                None => &self.record[..],
            };
            let (number, line) = (self.line, Line { bytes, len });
            let position = || Position { source: std::sync::Arc::clone(&self.name), record: number, offset: start };
            line.give(&self.decoding, self.written, position, out);
            if whole.is_some() {
                self.reader.consume(len + 1);
            }
        }
        Ok(true)
    }
}

/// A line: its bytes (only the first of an oversized one) and its whole length.
struct Line<'b> {
    bytes: &'b [u8],
    len: usize,
}

impl Line<'_> {
    /// Gives the line's record to `out` as `decoding` reads it, without its line's `\r`; a blank line
    /// is not a record.
    fn give(mut self, decoding: &Decoding, written: Written, position: impl Fn() -> Position, out: &mut Vec<Item>) {
        if let Some(cut) = self.bytes.strip_suffix(b"\r").filter(|_| self.len <= decoding.max_record_bytes + 1) {
            self.bytes = cut;
            self.len -= 1;
        }
        if self.bytes.iter().all(u8::is_ascii_whitespace) && self.len == self.bytes.len() {
            return;
        }
        let written = match written {
            Written::Unknown => None,
            Written::At(time) => Some(time),
            Written::AsRead => Some(unix_millis(std::time::SystemTime::now())),
        };
        decoding.read(self.bytes, self.len, written, position, None, out);
    }
}

/// A partition whose reads may wait (a pipe, a device), read record by record on a thread of its
/// own: its poll gives what has arrived and returns at once. It cannot seek, as a pipe cannot.
pub struct StreamPartition {
    name: String,
    /// Each record's items (or the error that ended reading), whether more may come, and the
    /// position after it.
    records: std::sync::mpsc::Receiver<(Result<Vec<Item>>, bool, Option<PartitionPosition>)>,
    position: Option<PartitionPosition>,
    /// Called when a record arrives, once the source asks.
    waker: SharedWaker,
}

/// What a stream's thread calls when a record arrives, once the source has said.
type SharedWaker = Arc<Mutex<Option<Arc<dyn Fn() + Send + Sync>>>>;

/// Records a stream's thread may read ahead of its poll.
const STREAM_READ_AHEAD: usize = 4_096;

impl StreamPartition {
    /// Reads the partition `open` makes on a new thread.
    pub fn spawn<P: Partition + 'static>(name: String, open: impl FnOnce() -> P + Send + 'static) -> Result<Self> {
        let (sender, records) = std::sync::mpsc::sync_channel(STREAM_READ_AHEAD);
        let waker = SharedWaker::default();
        let wake = Arc::clone(&waker);
        std::thread::Builder::new()
            .name(format!("read {name}"))
            .spawn(move || {
                let mut partition = open();
                let mut more = true;
                while more {
                    let mut items = Vec::new();
                    let polled = partition.poll(1, &mut items);
                    more = matches!(polled, Ok(true));
                    // The source has gone when the record cannot be sent.
                    if sender.send((polled.map(|_| items), more, partition.position())).is_err() {
                        return;
                    }
                    if let Some(wake) = wake.lock().ok().and_then(|w| w.clone()) {
                        wake();
                    }
                }
            })
            .with_context(|| format!("starting the thread that reads {name}"))?;
        Ok(StreamPartition { name, records, position: None, waker })
    }
}

impl Partition for StreamPartition {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn poll(&mut self, max: usize, out: &mut Vec<Item>) -> Result<bool> {
        for _ in 0..max {
            match self.records.try_recv() {
                Ok((items, more, position)) => {
                    out.extend(items?);
                    self.position = position;
                    if !more {
                        return Ok(false);
                    }
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => anyhow::bail!("the thread reading {} ended", self.name),
            }
        }
        Ok(true)
    }

    fn wake_on_arrival(&mut self, wake: Arc<dyn Fn() + Send + Sync>) -> bool {
        match self.waker.lock() {
            Ok(mut waker) => {
                *waker = Some(wake);
                true
            }
            Err(_) => false,
        }
    }

    fn position(&self) -> Option<PartitionPosition> {
        self.position.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::partition::Item;

    fn items(input: &[u8], max: usize) -> Vec<Item> {
        let mut p = JsonLinesPartition::from_bytes("m", input.to_vec(), Decoding { max_record_bytes: max, ..Decoding::default() });
        let mut out = Vec::new();
        while p.poll(2, &mut out).unwrap() {}
        out
    }

    #[test]
    fn lines_positions_and_oversized_records() {
        let long = format!("{{\"x\":\"{}\"}}", "a".repeat(100));
        let input = format!("{{\"event_id\":\"1\",\"ts\":1,\"user\":\"u\",\"action\":\"a\"}}\r\n\n{long}\nnot json\n");
        let mut bytes = input.into_bytes();
        bytes.push(0xff);
        let out = items(&bytes, 64);
        assert_eq!(out.len(), 4);
        assert!(matches!(&out[0], Item::Event(e) if e.event_id == "1"));
        match &out[1] {
            Item::Rejected(d) => {
                assert!(d.reason.contains("exceeds the limit of 64 bytes"), "{}", d.reason);
                assert_eq!(d.position.record, 3);
                assert!(d.truncated);
                assert_eq!(d.size, long.len() as u64);
                assert_eq!(d.original.as_deref().map(str::len), Some(64));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&out[2], Item::Rejected(d) if d.position.record == 4 && d.original.as_deref() == Some("not json")));
        assert!(matches!(&out[3], Item::Rejected(d) if d.original_base64.is_some() && d.original_bytes() == vec![0xff]));
    }
}
