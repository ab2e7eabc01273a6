//! Authenticated control updates: with a shared key, whoever can write the control topics but
//! does not hold the key cannot swap the model, change the rules or unblock a user.
//!
//! A signed update is an envelope around the update's text, `{"signed": TEXT, "hmac_sha256":
//! HEX}`, the HMAC-SHA256 of TEXT's bytes under the key. With a key configured, a job accepts only
//! envelopes that verify; without one, it reads updates as they are (and refuses envelopes, so a
//! signed update is never applied unverified by mistake).
//!
//! ```
//! use threatflow::control::signing::ControlKey;
//!
//! let key = ControlKey::new(b"a shared secret of 16+ bytes".to_vec()).unwrap();
//! let update = r#"{"unblock": "ann", "effective_from": 1767571200000}"#;
//! let envelope = key.sign(update);
//! assert_eq!(key.open(envelope.as_bytes()).unwrap(), update);
//! let forged = envelope.replace("ann", "bob");
//! assert!(key.open(forged.as_bytes()).is_err());
//! assert!(key.open(update.as_bytes()).is_err(), "unsigned updates are refused");
//! ```

use std::borrow::Cow;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The environment variable that may name the key file instead of `--control-key-file`.
pub const CONTROL_KEY_FILE_ENV: &str = "THREATFLOW_CONTROL_KEY_FILE";

/// A key that signs and verifies control updates. Its `Debug` form hides it.
#[derive(Clone)]
pub struct ControlKey(Vec<u8>);

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlKey(***)")
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    signed: Cow<'a, str>,
    hmac_sha256: String,
}

impl ControlKey {
    /// A key of at least 16 bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        ensure!(bytes.len() >= 16, "a control key needs at least 16 bytes, it has {}", bytes.len());
        Ok(ControlKey(bytes))
    }

    /// Reads a key file (its content, without surrounding white space).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading the control key {}", path.display()))?;
        let text = bytes.trim_ascii();
        ControlKey::new(text.to_vec()).with_context(|| format!("control key {}", path.display()))
    }

    /// The key named by `path`, or by the environment variable [`CONTROL_KEY_FILE_ENV`].
    pub fn from_file_or_env(path: Option<&Path>) -> Result<Option<Self>> {
        match (path, std::env::var_os(CONTROL_KEY_FILE_ENV)) {
            (Some(path), _) => Ok(Some(Self::load(path)?)),
            (None, Some(path)) => Ok(Some(Self::load(Path::new(&path))?)),
            (None, None) => Ok(None),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// The envelope of `update`.
    pub fn sign(&self, update: &str) -> String {
        let mut mac = self.mac();
        mac.update(update.as_bytes());
        let envelope = Envelope { signed: Cow::Borrowed(update), hmac_sha256: hex::encode(mac.finalize().into_bytes()) };
        serde_json::to_string(&envelope).unwrap_or_else(|_| unreachable!("a string and a hex string serialise"))
    }

    /// The update inside a verified envelope.
    pub fn open<'a>(&self, record: &'a [u8]) -> Result<Cow<'a, str>> {
        let Some(envelope) = envelope(record) else { bail!("not a signed control update (a key is configured: unsigned updates are refused)") };
        let envelope = envelope?;
        let tag = hex::decode(&envelope.hmac_sha256).context("`hmac_sha256` is not hex")?;
        let mut mac = self.mac();
        mac.update(envelope.signed.as_bytes());
        mac.verify_slice(&tag).map_err(|_| anyhow::anyhow!("the control update's signature does not verify: refused"))?;
        Ok(envelope.signed)
    }
}

/// The envelope, if the record is one (`None`: it is not).
fn envelope(record: &[u8]) -> Option<Result<Envelope<'_>>> {
    let text = std::str::from_utf8(record).ok()?.trim();
    (text.starts_with('{') && text.contains("\"hmac_sha256\"")).then(|| serde_json::from_str(text).context("a malformed signed control update"))
}

/// The update a job reads from a control record: verified and unwrapped with a key; as it is
/// without one (an envelope is then refused).
pub fn open<'a>(key: Option<&ControlKey>, record: &'a [u8]) -> Result<Cow<'a, str>> {
    match key {
        Some(key) => key.open(record),
        None => {
            ensure!(envelope(record).is_none(), "a signed control update, but no control key is configured (--control-key-file): refused");
            std::str::from_utf8(record).map(Cow::Borrowed).context("the control update is not UTF-8")
        }
    }
}
