//! API keys: random secrets shown once, stored only as SHA-256 hashes in `API_KEYS_FILE` (mode 0600).
//! Each key is bound to one tenant, or marked admin for all tenants. The server re-reads the file
//! when it changes, so `keys create` and `keys revoke` take effect without a restart.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use aws_lc_rs::{constant_time, digest};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::Caller;
use crate::ids::TenantId;

/// The prefix of every key, so that leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "ask_";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRecord {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// The tenant the key is bound to; `None` only for admin keys.
    pub tenant: Option<String>,
    #[serde(default)]
    pub admin: bool,
    /// `sha256:<hex>` of the key.
    pub hash: String,
    pub created_at: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFile {
    keys: Vec<KeyRecord>,
}

fn hash(key: &str) -> String {
    let d = digest::digest(&digest::SHA256, key.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn read_file(path: &Path) -> std::io::Result<KeyFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
        Err(e) => Err(e),
    }
}

/// Writes the file atomically (a temporary file renamed over it), readable by its owner only.
fn write_file(path: &Path, file: &KeyFile) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = crate::private_file::create(&tmp)?;
    std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(file)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A new key: the secret (shown once) and the record that is stored.
pub fn create(
    path: &Path,
    tenant: Option<&TenantId>,
    name: Option<String>,
    admin: bool,
) -> std::io::Result<(String, KeyRecord)> {
    let mut file = read_file(path)?;
    let secret = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(crate::random::bytes::<32>()));
    let id: String = crate::random::bytes::<6>().iter().map(|b| format!("{b:02x}")).collect();
    let record = KeyRecord {
        id: format!("key_{id}"),
        name,
        tenant: tenant.map(|t| t.to_string()),
        admin,
        hash: hash(&secret),
        created_at: crate::timestamp::now().into(),
    };
    file.keys.push(record.clone());
    write_file(path, &file)?;
    Ok((secret, record))
}

pub fn list(path: &Path) -> std::io::Result<Vec<KeyRecord>> {
    Ok(read_file(path)?.keys)
}

/// Removes a key; false when no key has that id.
pub fn revoke(path: &Path, id: &str) -> std::io::Result<bool> {
    let mut file = read_file(path)?;
    let before = file.keys.len();
    file.keys.retain(|k| k.id != id);
    if file.keys.len() == before {
        return Ok(false);
    }
    write_file(path, &file)?;
    Ok(true)
}

/// When and how large the keys file was when it was last read.
type FileStamp = Option<(SystemTime, u64)>;

/// The keys the server checks requests against, reloaded when the file changes.
pub struct ApiKeys {
    path: PathBuf,
    cache: Mutex<(FileStamp, Vec<KeyRecord>)>,
}

impl ApiKeys {
    pub fn new(path: PathBuf) -> Self {
        Self { path, cache: Mutex::new((None, Vec::new())) }
    }

    fn records(&self) -> Vec<KeyRecord> {
        let stamp = std::fs::metadata(&self.path).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != stamp || stamp.is_none() {
            match read_file(&self.path) {
                Ok(file) => *cache = (stamp, file.keys),
                Err(e) => tracing::error!(error = %e, "cannot read API_KEYS_FILE; keeping the keys read before"),
            }
        }
        cache.1.clone()
    }

    /// The caller a key belongs to. Every stored hash is compared, in constant time.
    pub fn verify(&self, key: &str) -> Option<Caller> {
        let presented = hash(key);
        let mut found = None;
        for record in self.records() {
            if constant_time::verify_slices_are_equal(presented.as_bytes(), record.hash.as_bytes()).is_ok() {
                found = Some(record);
            }
        }
        let record = found?;
        Some(Caller {
            tenant: if record.admin { None } else { record.tenant.and_then(|t| TenantId::parse(t).ok()) },
            user: None,
            admin: record.admin,
            name: record.name.unwrap_or(record.id),
        })
        .filter(|c| c.admin || c.tenant.is_some())
    }
}
