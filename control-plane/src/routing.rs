//! The routing placement: the signed `routing` document in the snapshots bucket is its
//! source of truth. Every accepted change is validated whole and published as one new
//! revision with compare-and-set, so two replicas never publish the same revision.

use std::sync::Arc;

use gateway_core::routing::{RoutingDocument, ServiceKind};
use gateway_core::signed::{DocSigningKey, DocVerifyingKeys, Verified};
use gateway_edge::{ApiError, ErrorCode, Reason};
use gateway_store::{Bucket, Store, StoreError};

/// Key and kind of the routing document.
pub const ROUTING_DOC: &str = "routing";

pub struct RoutingAdmin {
    pub store: Store,
    pub signer: Arc<DocSigningKey>,
}

fn conflict(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Conflict, message).with_reason(Reason::RoutingRevisionConflict)
}

impl RoutingAdmin {
    /// The published document (verified with our own key) and its store revision.
    pub async fn current(
        &self,
    ) -> Result<(Option<Verified<RoutingDocument>>, Option<u64>), ApiError> {
        let (doc, stored) = self.read().await?;
        Ok((doc, stored.map(|(revision, _)| revision)))
    }

    /// The published document, its store revision and the value stored under the key
    /// (a manifest when the document is large; see `gateway_store::large`).
    async fn read(
        &self,
    ) -> Result<
        (
            Option<Verified<RoutingDocument>>,
            Option<(u64, bytes::Bytes)>,
        ),
        ApiError,
    > {
        let kv = self.store.kv(Bucket::Snapshots);
        match kv.get(ROUTING_DOC).await? {
            Some(entry) => {
                let bytes =
                    gateway_store::large::resolve(kv.as_ref(), ROUTING_DOC, entry.value.clone())
                        .await?;
                let own = DocVerifyingKeys::new([self.signer.verifying_key()]);
                let doc = own
                    .verify::<RoutingDocument>(&bytes, ROUTING_DOC)
                    .map_err(|err| ApiError::internal("published routing unreadable", &err))?;
                Ok((Some(doc), Some((entry.revision, entry.value))))
            }
            None => Ok((None, None)),
        }
    }

    /// Validates `document` and publishes it as the next revision. With `expected`, only if
    /// the current revision is that one (0: none published yet).
    pub async fn publish(
        &self,
        document: RoutingDocument,
        expected: Option<u64>,
        now: i64,
    ) -> Result<u64, ApiError> {
        document.validate().map_err(|err| {
            ApiError::bad_request(err.to_string()).with_reason(Reason::InvalidRouting)
        })?;
        let (current, stored) = self.read().await?;
        let current_revision = current.as_ref().map_or(0, |d| d.revision);
        if expected.is_some_and(|e| e != current_revision) {
            return Err(conflict(
                "the routing changed since it was read; read it again",
            ));
        }
        let revision = current_revision + 1;
        let mut document = document;
        let previous = current.as_ref().map(|d| &d.payload);
        for kind in ServiceKind::ALL {
            let unchanged = previous.filter(|p| p.kind(kind) == document.kind(kind));
            let since = unchanged
                .and_then(|p| p.kind_revisions.get(&kind).copied())
                .unwrap_or(revision);
            document.kind_revisions.insert(kind, since);
        }
        let bytes = self
            .signer
            .sign(ROUTING_DOC, revision, now, &document)
            .map_err(|err| ApiError::internal("signing routing", &err))?;
        let kv = self.store.kv(Bucket::Snapshots);
        // a document over one message (100,000 tenants) goes as parts and a manifest
        let written = gateway_store::large::write(
            kv.as_ref(),
            ROUTING_DOC,
            bytes,
            stored.as_ref().map(|(kv_revision, _)| *kv_revision),
        )
        .await;
        match written {
            Ok(_) => {
                if let Some((_, replaced)) = &stored {
                    gateway_store::large::delete_parts(kv.as_ref(), ROUTING_DOC, replaced).await;
                }
                metrics::gauge!("gateway_routing_published_revision").set(revision as f64);
                tracing::info!(revision, "routing published");
                Ok(revision)
            }
            Err(StoreError::Conflict { .. }) => Err(conflict(
                "another change was published at the same time; read it again",
            )),
            Err(err) => Err(err.into()),
        }
    }

    /// Publishes an empty routing as revision 1 when no routing exists yet: a fresh
    /// platform's data planes then load it and become ready before any shard is placed
    /// (requests for unplaced tenants are refused by them as such). A routing that exists
    /// is left alone, whoever signed it; another replica creating it first is fine.
    pub async fn ensure_published(&self, now: i64) -> Result<(), ApiError> {
        let kv = self.store.kv(Bucket::Snapshots);
        if kv.get(ROUTING_DOC).await?.is_some() {
            return Ok(());
        }
        let mut document = RoutingDocument::default();
        for kind in ServiceKind::ALL {
            document.kind_revisions.insert(kind, 1);
        }
        let bytes = self
            .signer
            .sign(ROUTING_DOC, 1, now, &document)
            .map_err(|err| ApiError::internal("signing routing", &err))?;
        match kv.create(ROUTING_DOC, bytes).await {
            Ok(_) => {
                metrics::gauge!("gateway_routing_published_revision").set(1.0);
                tracing::info!(revision = 1, "empty routing published (fresh platform)");
                Ok(())
            }
            Err(StoreError::Conflict { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Applies `change` to the current document (an empty one if none) and publishes it,
    /// retrying when another replica published meanwhile. Returns (before, after, revision).
    pub async fn modify(
        &self,
        now: i64,
        change: impl Fn(&mut RoutingDocument) -> Result<(), ApiError>,
    ) -> Result<(RoutingDocument, RoutingDocument, u64), ApiError> {
        for _ in 0..5 {
            let (current, _) = self.current().await?;
            let revision = current.as_ref().map_or(0, |d| d.revision);
            let before = current.map(|d| d.payload).unwrap_or_default();
            let mut after = before.clone();
            change(&mut after)?;
            match self.publish(after.clone(), Some(revision), now).await {
                Ok(published) => return Ok((before, after, published)),
                Err(err) if err.reason == Some(Reason::RoutingRevisionConflict) => continue,
                Err(err) => return Err(err),
            }
        }
        Err(conflict("the routing keeps changing; try again"))
    }
}
