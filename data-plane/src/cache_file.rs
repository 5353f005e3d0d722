//! The local cache file of the last verified documents (`--mirror-cache-file`): written
//! whenever the mirrors change (at most once a second, atomically: a temporary file
//! renamed over the old one), and read at start so a replica that restarts while the
//! store is unreachable serves from it. Every document in it is verified again, exactly
//! as if it came from the store: the routing and key documents on load, the principal
//! documents on first use or by a background pass after the load (100,000 signatures
//! would hold readiness back by seconds). A tampered or foreign file changes nothing that
//! is served: a document that fails is refused like a missing one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use gateway_core::signed::{DocError, DocVerifyingKeys};
use tokio_util::sync::CancellationToken;

use crate::mirror::{JWKS, Journal, Mirrors, PRINCIPAL, ROUTING, reject};

/// Version of the file's shape.
const VERSION: u32 = 1;

/// The file as read.
#[derive(serde::Deserialize)]
struct CacheFile {
    version: u32,
    documents: StoredDocuments,
}

#[derive(serde::Deserialize)]
struct StoredDocuments {
    #[serde(default)]
    routing: Option<String>,
    #[serde(default)]
    jwks: Option<String>,
    /// principal id → signed document (base64), decoded as it is read.
    #[serde(default)]
    principals: PrincipalsIn,
}

/// The principal documents of the file, decoded while the file is parsed (no map of
/// 100,000 base64 strings beside the decoded bytes); `None` for an entry that is not
/// base64.
#[derive(Default)]
struct PrincipalsIn(Vec<(String, Option<bytes::Bytes>)>);

impl<'de> serde::Deserialize<'de> for PrincipalsIn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = PrincipalsIn;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of principal ids to base64 documents")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<PrincipalsIn, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some((principal, doc)) =
                    map.next_entry::<String, std::borrow::Cow<'de, str>>()?
                {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(doc.as_bytes())
                        .ok()
                        .map(bytes::Bytes::from);
                    entries.push((principal, bytes));
                }
                Ok(PrincipalsIn(entries))
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

/// The file as written: the same shape, the principal documents encoded while they are
/// written out (no second copy of 100,000 documents in memory).
#[derive(serde::Serialize)]
struct CacheFileOut<'a> {
    version: u32,
    documents: DocumentsOut<'a>,
}

#[derive(serde::Serialize)]
struct DocumentsOut<'a> {
    routing: &'a Option<String>,
    jwks: &'a Option<String>,
    principals: PrincipalsOut<'a>,
}

struct PrincipalsOut<'a>(&'a [(String, bytes::Bytes)]);

impl serde::Serialize for PrincipalsOut<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (principal, bytes) in self.0 {
            map.serialize_entry(
                principal,
                &base64::engine::general_purpose::STANDARD.encode(bytes),
            )?;
        }
        map.end()
    }
}

/// What a load found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Routing and key documents verified and applied.
    pub applied: usize,
    pub rejected: usize,
    /// Principal documents filed, to be verified on first use (or by the pass after the
    /// load: [`Mirrors::verify_loaded`]).
    pub deferred: usize,
}

/// Applies the documents of the cache file at `path`; a missing file is an empty cache,
/// an unreadable one is logged and ignored. The routing and key documents are verified
/// now; the principal documents when first used (see [`crate::mirror::PrincipalSlot`]).
pub fn load(path: &Path, mirrors: &Mirrors, keys: &Arc<DocVerifyingKeys>) -> Loaded {
    let mut loaded = Loaded::default();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return loaded,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read the mirror cache file, starting without it");
            return loaded;
        }
    };
    let file = match serde_json::from_slice::<CacheFile>(&bytes) {
        Ok(file) if file.version == VERSION => file,
        Ok(file) => {
            tracing::warn!(path = %path.display(), version = file.version, "mirror cache file of another version, ignored");
            return loaded;
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "mirror cache file is not valid, ignored");
            return loaded;
        }
    };
    // the file's bytes are not needed past the parse (tens of MB with 100,000 principals)
    drop(bytes);
    let decode = |b64: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|err| DocError::Malformed(err.to_string()))
    };
    let mut count = |kind: &str, result: Result<bool, DocError>| match result {
        Ok(_) => loaded.applied += 1,
        Err(err) => {
            reject(kind, &err);
            loaded.rejected += 1;
        }
    };
    let documents = file.documents;
    for (kind, doc) in [(ROUTING, &documents.routing), (JWKS, &documents.jwks)] {
        if let Some(doc) = doc {
            count(
                kind,
                decode(doc).and_then(|bytes| mirrors.apply(keys, kind, &bytes)),
            );
        }
    }
    for (principal, doc) in documents.principals.0 {
        match doc {
            Some(bytes) => {
                if mirrors.load_principal(keys, &principal, bytes) {
                    loaded.deferred += 1;
                }
            }
            None => {
                reject(PRINCIPAL, &DocError::Malformed("not base64".into()));
                loaded.rejected += 1;
            }
        }
    }
    // the file counts as a whole copy only when it is ours: its key or routing document
    // verified, and one of its first principal documents too (a file signed under a
    // retired key would otherwise make the replica ready with documents it must refuse)
    let sample: Vec<String> = mirrors.principals.read().keys().take(8).cloned().collect();
    let sample_ok = loaded.deferred == 0 || sample.iter().any(|id| mirrors.principal(id).is_some());
    if loaded.applied > 0 && sample_ok {
        // the file is a whole copy of the principal documents as they were applied
        mirrors
            .principals_replayed
            .store(true, std::sync::atomic::Ordering::Release);
    }
    tracing::info!(path = %path.display(), applied = loaded.applied, rejected = loaded.rejected, principals = loaded.deferred, "mirror cache file loaded");
    loaded
}

/// Writes the journal to `path` atomically when it changed.
fn write(path: &Path, mirrors: &Mirrors) -> std::io::Result<bool> {
    let Some(journal) = mirrors.journal.as_ref() else {
        return Ok(false);
    };
    let documents = {
        let mut journal = journal.lock();
        if !journal.dirty {
            return Ok(false);
        }
        journal.dirty = false;
        journal.clone()
    };
    let principals = mirrors.principal_documents();
    let written = write_file(path, &documents, &principals);
    if written.is_err() {
        // written again on the next tick
        journal.lock().dirty = true;
    }
    written.map(|()| true)
}

fn write_file(
    path: &Path,
    documents: &Journal,
    principals: &[(String, bytes::Bytes)],
) -> std::io::Result<()> {
    let tmp = temporary(path);
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&tmp).and_then(|file| {
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
            serde_json::to_writer(
                &mut out,
                &CacheFileOut {
                    version: VERSION,
                    documents: DocumentsOut {
                        routing: &documents.routing,
                        jwks: &documents.jwks,
                        principals: PrincipalsOut(principals),
                    },
                },
            )
            .map_err(std::io::Error::other)?;
            out.flush()?;
            out.get_ref().sync_all()
        });
        if let Err(err) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
    }
    if let Err(err) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err);
    }
    Ok(())
}

/// A name next to `path` that no other writer uses: two replicas can share the cache's
/// directory (the old and the new task of a start-first update on one node mount the same
/// volume, and both are pid 1 in their containers), and a shared temporary file would
/// mix their writes before the rename.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    path.with_file_name(name)
}

/// Keeps the cache file current until `shutdown`, then writes it a last time.
pub async fn keep(path: PathBuf, mirrors: Arc<Mirrors>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        let (path_for_write, mirrors_for_write) = (path.clone(), Arc::clone(&mirrors));
        let written =
            tokio::task::spawn_blocking(move || write(&path_for_write, &mirrors_for_write)).await;
        match written {
            Ok(Ok(true)) => {
                metrics::counter!("gateway_mirror_cache_writes_total").increment(1);
                tracing::debug!(path = %path.display(), "mirror cache file written");
            }
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                metrics::counter!("gateway_mirror_cache_write_errors_total").increment(1);
                tracing::warn!(path = %path.display(), error = %err, "cannot write the mirror cache file");
                if let Some(mut journal) = mirrors.journal.as_ref().map(|j| j.lock()) {
                    journal.dirty = true;
                }
            }
            Err(err) => tracing::warn!(error = %err, "mirror cache writer failed"),
        }
        if stopping {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::signed::DocSigningKey;
    use serde_json::json;

    #[test]
    fn written_documents_load_again_verified_and_tampering_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirrors.json");
        let signer = DocSigningKey::generate();
        let keys = Arc::new(DocVerifyingKeys::new([signer.verifying_key()]));
        let mirrors = Mirrors::new(false, true);
        let routing = json!({"aggregate": {"shards": {"a": ["http://127.0.0.1:1"]}, "placement": {"acme": "a"}}});
        mirrors
            .apply(
                &keys,
                ROUTING,
                &signer.sign(ROUTING, 3, 10, &routing).unwrap(),
            )
            .unwrap();
        assert!(write(&path, &mirrors).unwrap());
        assert!(!write(&path, &mirrors).unwrap(), "unchanged: not written");

        let restarted = Mirrors::new(false, true);
        assert_eq!(
            load(&path, &restarted, &keys),
            Loaded {
                applied: 1,
                rejected: 0,
                deferred: 0
            }
        );
        assert_eq!(restarted.routing.load().as_ref().unwrap().revision, 3);

        // the same file under another signing key: nothing is applied
        let foreign = Arc::new(DocVerifyingKeys::new([
            DocSigningKey::generate().verifying_key()
        ]));
        let other = Mirrors::new(false, true);
        assert_eq!(load(&path, &other, &foreign).rejected, 1);
        assert!(other.routing.load().is_none());

        // a tampered payload fails the signature check
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let doc = base64::engine::general_purpose::STANDARD
            .decode(file["documents"]["routing"].as_str().unwrap())
            .unwrap();
        let original = String::from_utf8(doc).unwrap();
        let tampered = original.replace("127.0.0.1:1", "127.0.0.1:2");
        assert_ne!(original, tampered);
        file["documents"]["routing"] =
            json!(base64::engine::general_purpose::STANDARD.encode(tampered));
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
        let other = Mirrors::new(false, true);
        assert_eq!(load(&path, &other, &keys).rejected, 1);
        assert!(other.routing.load().is_none());

        // two writers sharing the directory (two tasks on one node, one volume): every
        // file a reader finds is whole, and no temporary file is left behind
        let shared = dir.path().join("shared.json");
        let signer = Arc::new(DocSigningKey::generate());
        let keys = Arc::new(DocVerifyingKeys::new([signer.verifying_key()]));
        let writers: Vec<_> = (0..2u64)
            .map(|writer| {
                let (shared, signer, keys) =
                    (shared.clone(), Arc::clone(&signer), Arc::clone(&keys));
                std::thread::spawn(move || {
                    let mirrors = Mirrors::new(false, true);
                    for round in 0..200u64 {
                        // documents of different sizes, so mixed writes would show
                        let endpoints: Vec<String> = (0..(writer * 37 + round * 7) % 80 + 1)
                            .map(|i| format!("http://10.0.{}.{}:1", i / 250, i % 250))
                            .collect();
                        let routing = json!({"runner": {"shards": {"r": endpoints}}});
                        let revision = 10 + round * 2 + writer;
                        mirrors
                            .apply(
                                &keys,
                                ROUTING,
                                &signer.sign(ROUTING, revision, 10, &routing).unwrap(),
                            )
                            .unwrap();
                        write(&shared, &mirrors).unwrap();
                    }
                })
            })
            .collect();
        let mut reads = 0;
        while writers.iter().any(|w| !w.is_finished()) {
            if shared.exists() {
                let reader = Mirrors::new(false, true);
                assert_eq!(
                    load(&shared, &reader, &keys),
                    Loaded {
                        applied: 1,
                        rejected: 0,
                        deferred: 0
                    }
                );
                reads += 1;
            }
        }
        for writer in writers {
            writer.join().unwrap();
        }
        assert!(reads > 0);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // garbage and a missing file are an empty cache
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(load(&path, &other, &keys), Loaded::default());
        assert_eq!(
            load(&dir.path().join("absent.json"), &other, &keys),
            Loaded::default()
        );
    }

    /// Principal documents come back from the file unverified and are checked on first
    /// use: a good one serves, one altered in the file is refused (as if missing) and
    /// gives way to the store's next document.
    #[test]
    fn principal_documents_load_unverified_and_are_checked_on_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mirrors.json");
        let signer = DocSigningKey::generate();
        let keys = Arc::new(DocVerifyingKeys::new([signer.verifying_key()]));
        let mirrors = Mirrors::new(false, true);
        let doc = |id: &str, revision: u64, valid_after: i64| {
            signer
                .sign(
                    PRINCIPAL,
                    revision,
                    10,
                    &json!({"principal_id": id, "tokens_valid_after": valid_after}),
                )
                .unwrap()
        };
        let routing = json!({"aggregate": {"shards": {"a": ["http://127.0.0.1:1"]}, "placement": {"acme": "a"}}});
        mirrors
            .apply(
                &keys,
                ROUTING,
                &signer.sign(ROUTING, 1, 10, &routing).unwrap(),
            )
            .unwrap();
        for id in ["usr_a", "usr_b"] {
            assert_eq!(mirrors.apply_principal(&keys, id, &doc(id, 2, 7)), Ok(true));
        }
        assert!(write(&path, &mirrors).unwrap());

        // usr_b's document altered in the file (same length: another number)
        let mut file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let b64 = &base64::engine::general_purpose::STANDARD;
        let original = String::from_utf8(
            b64.decode(file["documents"]["principals"]["usr_b"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        let altered = original.replace("\"tokens_valid_after\":7", "\"tokens_valid_after\":8");
        assert_ne!(original, altered);
        file["documents"]["principals"]["usr_b"] = json!(b64.encode(altered));
        std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();

        let restarted = Mirrors::new(false, true);
        assert_eq!(
            load(&path, &restarted, &keys),
            Loaded {
                applied: 1,
                rejected: 0,
                deferred: 2
            }
        );
        assert!(
            restarted
                .principals_replayed
                .load(std::sync::atomic::Ordering::Acquire)
        );
        assert_eq!(
            restarted
                .principal("usr_a")
                .unwrap()
                .payload
                .tokens_valid_after,
            7
        );
        assert!(restarted.principal("usr_b").is_none(), "altered: refused");
        assert_eq!(restarted.verify_loaded(), 1);
        // an older document from the store does not replace a good one; any newer one
        // replaces the refused one
        assert!(matches!(
            restarted.apply_principal(&keys, "usr_a", &doc("usr_a", 1, 1)),
            Err(DocError::StaleRevision { .. })
        ));
        assert_eq!(
            restarted.apply_principal(&keys, "usr_b", &doc("usr_b", 1, 9)),
            Ok(true)
        );
        assert_eq!(
            restarted
                .principal("usr_b")
                .unwrap()
                .payload
                .tokens_valid_after,
            9
        );
        // and the file written next holds what is in force
        assert!(write(&path, &restarted).unwrap());
        let again = Mirrors::new(false, true);
        assert_eq!(load(&path, &again, &keys).deferred, 2);
        assert_eq!(again.verify_loaded(), 0);
        assert_eq!(again.principal("usr_b").unwrap().revision, 1);

        // under another key (a retired one) the file is not a copy to be ready from
        let foreign = Arc::new(DocVerifyingKeys::new([
            DocSigningKey::generate().verifying_key()
        ]));
        let other = Mirrors::new(false, true);
        assert_eq!(load(&path, &other, &foreign).deferred, 2);
        assert!(
            !other
                .principals_replayed
                .load(std::sync::atomic::Ordering::Acquire)
        );
        assert!(other.principal("usr_a").is_none());
    }
}
