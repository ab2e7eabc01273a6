//! Artifact locations: reading and writing the bytes a model location names.
//!
//! A location is a local path, a `file://` URI, or an object-store URI `s3://BUCKET/KEY` (through
//! the `object_store` crate). S3 settings come from the usual environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, `AWS_ENDPOINT` for an
//! S3-compatible endpoint, `AWS_ALLOW_HTTP=true` for a plain-HTTP one such as a local test server).
//!
//! ```
//! # fn main() -> anyhow::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let uri = format!("file://{}/model.json", dir.path().display());
//! threatflow::location::store(&uri, b"{}")?;
//! assert_eq!(threatflow::location::fetch(&uri, None)?, b"{}");
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

/// Where a location points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A local file.
    File(PathBuf),
    /// An object in an S3 bucket.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
    },
}

impl Location {
    /// Parses a location; relative paths are taken relative to `base` when one is given.
    pub fn parse(uri: &str, base: Option<&Path>) -> Result<Location> {
        if let Some(rest) = uri.strip_prefix("s3://").or_else(|| uri.strip_prefix("s3a://")) {
            let Some((bucket, key)) = rest.split_once('/').filter(|(b, k)| !b.is_empty() && !k.is_empty()) else {
                bail!("bad object-store location {uri:?}: expected s3://BUCKET/KEY");
            };
            return Ok(Location::S3 { bucket: bucket.to_string(), key: key.to_string() });
        }
        let path = match uri.strip_prefix("file://") {
            Some(rest) => PathBuf::from(rest),
            None if uri.contains("://") => bail!("unsupported location {uri:?} (use a path, a file:// URI or s3://BUCKET/KEY)"),
            None => PathBuf::from(uri),
        };
        Ok(Location::File(match base {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        }))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(path) => write!(f, "{}", path.display()),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// The largest artifact [`fetch`] reads: 64 MiB (a model is a few KiB; a location sent on a
/// control topic must not make the engine read a device or a huge object into memory).
pub const MAX_ARTIFACT_BYTES: u64 = 64 << 20;

/// Reads the bytes at `uri` (relative paths against `base`): a regular file or an object of at
/// most [`MAX_ARTIFACT_BYTES`].
pub fn fetch(uri: &str, base: Option<&Path>) -> Result<Vec<u8>> {
    fetch_at_most(uri, base, MAX_ARTIFACT_BYTES)
}

/// Reads the bytes at `uri` like [`fetch`], of at most `limit` bytes (a city database is larger
/// than any model).
pub fn fetch_at_most(uri: &str, base: Option<&Path>, limit: u64) -> Result<Vec<u8>> {
    let location = Location::parse(uri, base)?;
    let too_large = |size: u64| anyhow::anyhow!("{location} has {size} bytes, more than the {limit} it may have");
    match &location {
        Location::File(path) => {
            // Checked before opening: opening a FIFO would wait for a writer.
            let metadata = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
            anyhow::ensure!(metadata.is_file(), "{} is not a regular file", path.display());
            let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            match bytes.len() as u64 {
                size if size > limit => Err(too_large(size)),
                _ => Ok(bytes),
            }
        }
        Location::S3 { bucket, key } => {
            let (store, path) = s3(bucket, key)?;
            let size = block_on(async { Ok(store.head(&path).await?.size) }).with_context(|| format!("reading {location}"))?;
            if size > limit {
                return Err(too_large(size));
            }
            block_on(async move { Ok(store.get(&path).await?.bytes().await?.to_vec()) }).with_context(|| format!("reading {location}"))
        }
    }
}

/// Writes `bytes` to `uri`: a local file is written whole to a temporary name, then renamed.
pub fn store(uri: &str, bytes: &[u8]) -> Result<()> {
    let location = Location::parse(uri, None)?;
    match &location {
        Location::File(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let temporary = path.with_extension("partial");
            std::fs::write(&temporary, bytes).with_context(|| format!("writing {}", temporary.display()))?;
            std::fs::rename(&temporary, path).with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
        }
        Location::S3 { bucket, key } => {
            let (store, path) = s3(bucket, key)?;
            let payload = PutPayload::from(bytes.to_vec());
            block_on(async move { Ok(store.put(&path, payload).await.map(drop)?) }).with_context(|| format!("writing {location}"))
        }
    }
}

/// An S3 client for `bucket` from the environment, with bounded retries (a wrong endpoint fails in
/// seconds, not minutes), and the object's path.
fn s3(bucket: &str, key: &str) -> Result<(impl ObjectStore, object_store::path::Path)> {
    let retry = RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(10), ..RetryConfig::default() };
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_retry(retry)
        .build()
        .with_context(|| format!("configuring S3 for bucket {bucket}"))?;
    let path = object_store::path::Path::parse(key).with_context(|| format!("bad object key {key:?}"))?;
    Ok((store, path))
}

/// Runs one object-store request on a runtime of its own (locations are read rarely, off the
/// dataflow's hot path).
fn block_on<T>(future: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting an I/O runtime")?;
    runtime.block_on(future)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_bounded_size_are_read() {
        let err = format!("{:#}", fetch("/dev/zero", None).unwrap_err());
        assert!(err.contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.json");
        std::fs::File::create(&big).unwrap().set_len(MAX_ARTIFACT_BYTES + 1).unwrap();
        let err = format!("{:#}", fetch(big.to_str().unwrap(), None).unwrap_err());
        assert!(err.contains("more than the"), "{err}");
    }

    #[test]
    fn parses_locations() {
        assert_eq!(Location::parse("m.json", Some(Path::new("/d"))).unwrap(), Location::File("/d/m.json".into()));
        assert_eq!(Location::parse("/a/m.json", Some(Path::new("/d"))).unwrap(), Location::File("/a/m.json".into()));
        assert_eq!(Location::parse("file:///a/m.json", None).unwrap(), Location::File("/a/m.json".into()));
        assert_eq!(
            Location::parse("s3://models/v2/m.json", None).unwrap(),
            Location::S3 { bucket: "models".into(), key: "v2/m.json".into() }
        );
        for bad in ["s3://bucket", "s3:///key", "gopher://x/y"] {
            assert!(Location::parse(bad, None).is_err(), "{bad}");
        }
    }
}
