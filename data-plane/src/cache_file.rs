//! The local cache file of the last verified documents (`--mirror-cache-file`): written
//! whenever the mirrors change (at most once a second, atomically: a temporary file
//! renamed over the old one), and read at start so a replica that restarts while the
//! store is unreachable serves from it. Every document in it is verified again on load,
//! exactly as if it came from the store: a tampered or foreign file changes nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use gateway_core::signed::{DocError, DocVerifyingKeys};
use tokio_util::sync::CancellationToken;

use crate::mirror::{JWKS, Journal, Mirrors, PRINCIPAL, ROUTING, reject};

/// Version of the file's shape.
const VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheFile {
    version: u32,
    documents: Journal,
}

/// What a load found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    pub applied: usize,
    pub rejected: usize,
}

/// Applies the documents of the cache file at `path` (verified again); a missing file is
/// an empty cache, an unreadable one is logged and ignored.
pub fn load(path: &Path, mirrors: &Mirrors, keys: &DocVerifyingKeys) -> Loaded {
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
    for (principal, doc) in &documents.principals {
        count(
            PRINCIPAL,
            decode(doc).and_then(|bytes| mirrors.apply_principal(keys, principal, &bytes)),
        );
    }
    if loaded.applied > 0 {
        // the file is a whole copy of the principal documents as they were applied
        mirrors
            .principals_replayed
            .store(true, std::sync::atomic::Ordering::Release);
    }
    tracing::info!(path = %path.display(), applied = loaded.applied, rejected = loaded.rejected, "mirror cache file loaded");
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
    let written = write_file(path, documents);
    if written.is_err() {
        // written again on the next tick
        journal.lock().dirty = true;
    }
    written.map(|()| true)
}

fn write_file(path: &Path, documents: Journal) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&CacheFile {
        version: VERSION,
        documents,
    })
    .map_err(std::io::Error::other)?;
    let tmp = temporary(path);
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&tmp).and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()
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
        let keys = DocVerifyingKeys::new([signer.verifying_key()]);
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
                rejected: 0
            }
        );
        assert_eq!(restarted.routing.load().as_ref().unwrap().revision, 3);

        // the same file under another signing key: nothing is applied
        let foreign = DocVerifyingKeys::new([DocSigningKey::generate().verifying_key()]);
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
                        rejected: 0
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
}
