//! Values larger than one store message. A routing document placing 100,000 tenants is
//! about 1.5 MB, and NATS refuses any message above its `max_payload` (1 MiB by default),
//! so such a value is stored as deflate-compressed parts under `<key>.parts.<id>.<n>`,
//! written first, and a small manifest under the key itself, written last with the
//! caller's compare-and-set. Readers see only whole values: a manifest names its parts,
//! their total length and the SHA-256 of the compressed bytes, and [`resolve`] refuses
//! anything that does not match. Values up to [`INLINE_LIMIT`] are stored as they are,
//! so small documents (and every document written before this module) read unchanged.
//!
//! The parts of a replaced value are deleted by the writer after its manifest is in
//! place; a reader still holding the old manifest then finds a part missing and gets
//! `NotFound`, which the next watch event (the new manifest) makes moot.

use std::io::{Read, Write};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{KvBucket, Revision, StoreError};

/// Values up to this size are stored as they are.
pub const INLINE_LIMIT: usize = 256 * 1024;
/// Size of one part (compressed bytes), well under NATS's default 1 MiB message limit.
pub const PART_SIZE: usize = 512 * 1024;
/// Largest value accepted, compressed or not (a bound on what a manifest can make a
/// reader allocate).
pub const MAX_VALUE: usize = 64 * 1024 * 1024;

/// How every manifest starts (a signed document starts with `{"v":`).
const MANIFEST_PREFIX: &[u8] = b"{\"large_value\":";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    large_value: LargeValue,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LargeValue {
    /// Names this write's parts: `<key>.parts.<id>.<n>`, n from 0.
    id: String,
    parts: u32,
    /// Length of the compressed bytes (all parts).
    compressed: u64,
    /// Length of the value.
    size: u64,
    /// SHA-256 (hex) of the compressed bytes.
    sha256: String,
    /// Always `deflate`.
    encoding: String,
}

fn part_key(key: &str, id: &str, n: u32) -> String {
    format!("{key}.parts.{id}.{n}")
}

fn corrupt(key: &str, what: &str) -> StoreError {
    StoreError::Corrupt(format!("large value {key}: {what}"))
}

/// Whether a stored value is a manifest (else it is the value itself).
pub fn is_manifest(stored: &[u8]) -> bool {
    stored.starts_with(MANIFEST_PREFIX)
}

/// What to store for `value` under `key`: the value itself when small; otherwise the
/// manifest, and the parts to write before it.
pub fn split(key: &str, value: Bytes) -> Result<(Bytes, Vec<(String, Bytes)>), StoreError> {
    if value.len() <= INLINE_LIMIT && !is_manifest(&value) {
        return Ok((value, Vec::new()));
    }
    if value.len() > MAX_VALUE {
        return Err(corrupt(key, "larger than the 64 MiB bound"));
    }
    let mut encoder =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(&value)
        .map_err(|err| corrupt(key, &err.to_string()))?;
    let compressed = Bytes::from(
        encoder
            .finish()
            .map_err(|err| corrupt(key, &err.to_string()))?,
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let parts: Vec<(String, Bytes)> = (0..compressed.len().div_ceil(PART_SIZE))
        .map(|n| {
            let start = n * PART_SIZE;
            let end = (start + PART_SIZE).min(compressed.len());
            (part_key(key, &id, n as u32), compressed.slice(start..end))
        })
        .collect();
    let manifest = Manifest {
        large_value: LargeValue {
            id,
            parts: parts.len() as u32,
            compressed: compressed.len() as u64,
            size: value.len() as u64,
            sha256: hex::encode(Sha256::digest(&compressed)),
            encoding: "deflate".into(),
        },
    };
    let head = serde_json::to_vec(&manifest).map_err(|err| corrupt(key, &err.to_string()))?;
    Ok((Bytes::from(head), parts))
}

/// Writes `value` under `key` with compare-and-set: created when `expected` is `None`,
/// else updated only from that revision. Large values write their parts first; when the
/// manifest is refused (a conflict), or a part could not be written, the parts written are
/// removed again. After an unknown outcome (a timeout on the manifest) they stay: the
/// manifest may have been written and name them; unused ones are only space.
pub async fn write(
    kv: &dyn KvBucket,
    key: &str,
    value: Bytes,
    expected: Option<Revision>,
) -> Result<Revision, StoreError> {
    let (head, parts) = split(key, value)?;
    let mut written = 0;
    let mut result = Ok(0);
    for (part, bytes) in &parts {
        if let Err(err) = kv.put(part, bytes.clone()).await {
            result = Err(err);
            break;
        }
        written += 1;
    }
    if result.is_ok() {
        result = match expected {
            Some(revision) => kv.update(key, head, revision).await,
            None => kv.create(key, head).await,
        };
    }
    // only a refused compare-and-set is known not to have written the manifest: after
    // an unknown outcome (a timeout) the parts stay, in case the manifest names them
    if matches!(result, Err(StoreError::Conflict { .. }))
        || (result.is_err() && written < parts.len())
    {
        for (part, _) in &parts[..written] {
            let _ = kv.delete(part, None).await;
        }
    }
    result
}

/// Deletes the parts a replaced value's manifest names (nothing for an inline value).
/// Best effort: a part left behind is only unused space.
pub async fn delete_parts(kv: &dyn KvBucket, key: &str, replaced: &[u8]) {
    if !is_manifest(replaced) {
        return;
    }
    if let Ok(manifest) = serde_json::from_slice::<Manifest>(replaced) {
        let value = manifest.large_value;
        for n in 0..value.parts.min(((MAX_VALUE / PART_SIZE) + 1) as u32) {
            let _ = kv.delete(&part_key(key, &value.id, n), None).await;
        }
    }
}

/// The value stored under `key`: `stored` itself, or the value its manifest names, read
/// from its parts and checked (length, SHA-256, decompressed length).
pub async fn resolve(kv: &dyn KvBucket, key: &str, stored: Bytes) -> Result<Bytes, StoreError> {
    if !is_manifest(&stored) {
        return Ok(stored);
    }
    let manifest: Manifest =
        serde_json::from_slice(&stored).map_err(|err| corrupt(key, &err.to_string()))?;
    let value = manifest.large_value;
    if value.encoding != "deflate"
        || value.compressed as usize > MAX_VALUE
        || value.size as usize > MAX_VALUE
        || u64::from(value.parts) != value.compressed.div_ceil(PART_SIZE as u64)
    {
        return Err(corrupt(key, "manifest out of bounds"));
    }
    // nothing is reserved from the manifest's numbers: they are checked against the bytes
    let mut compressed = Vec::new();
    for n in 0..value.parts {
        let part = kv
            .get(&part_key(key, &value.id, n))
            .await?
            .ok_or_else(|| StoreError::NotFound(part_key(key, &value.id, n)))?;
        if compressed.len() + part.value.len() > value.compressed as usize {
            return Err(corrupt(key, "parts longer than the manifest says"));
        }
        compressed.extend_from_slice(&part.value);
    }
    if compressed.len() as u64 != value.compressed
        || hex::encode(Sha256::digest(&compressed)) != value.sha256
    {
        return Err(corrupt(key, "parts do not match the manifest"));
    }
    let mut out = Vec::new();
    flate2::read::DeflateDecoder::new(compressed.as_slice())
        .take(value.size + 1)
        .read_to_end(&mut out)
        .map_err(|err| corrupt(key, &err.to_string()))?;
    if out.len() as u64 != value.size {
        return Err(corrupt(
            key,
            "decompressed length differs from the manifest",
        ));
    }
    Ok(Bytes::from(out))
}
