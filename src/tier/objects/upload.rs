//! Saves: skip what the store already holds (`HEAD`), one conditional
//! `PUT` for an object under the multipart threshold, a leased multipart
//! upload for a larger one; never a copy of the artifact.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use futures::{FutureExt, StreamExt, future::BoxFuture, stream};
use object_store::{MultipartUpload, ObjectStoreExt, PutMode, PutPayload, path::Path};
use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use crate::{
    cache::CacheError,
    engine::{engine_key, ident_of},
    entry,
    tier::{
        breaker::{Verdict, deadline_after},
        remote_value::{MAC_LEN, ValueParts},
    },
    tier_events::{RequestOp, RequestResult},
    weights,
};

use super::{
    LEASE_SUFFIX,
    store::{Failed, Shared, result_of, verdict},
};

/// What a save did.
enum Saved {
    /// The object was uploaded by this node.
    Uploaded,
    /// The store already held it, or another node won the race to upload.
    Skipped,
}

impl Shared {
    pub(super) async fn save(
        self: &Arc<Self>,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        let ekey = engine_key(engine);
        let overhead = (entry::HEADER_LEN + MAC_LEN) as u64;
        let too_large = |size: u64| CacheError::TooLarge {
            tier: self.tier,
            size,
            limit: self.max_entry_bytes,
        };
        let hint = weights::lookup(key, ekey);
        if let Some(artifact) = hint
            && artifact + overhead > self.max_entry_bytes
        {
            return Err(too_large(artifact + overhead));
        }
        let ident = ident_of(engine);
        let path = self.path(&key, &ident);
        let call = self.admit("save", deadline_after(self.timeout)).await?;
        // Already there (saved by another node): nothing to send.
        let exists = self.head(&path, deadline_after(self.timeout), "save").await;
        match exists {
            Ok(Some(_)) => {
                call.settle(Verdict::Answered);
                return Ok(());
            }
            Ok(None) => {}
            Err(failed) => {
                call.settle(failed.verdict());
                return Err(failed.error);
            }
        }
        let big = hint.is_none_or(|b| b + overhead >= self.blocking_threshold);
        let parts = {
            let (shared, module) = (Arc::clone(self), module.clone());
            let storage_key = path.to_string();
            self.cpu(big, move || {
                ValueParts::build(&shared.signing, &storage_key, &key, &ident, &module)
            })
            .await??
        };
        weights::record(key, ekey, parts.artifact.len() as u64);
        if parts.len() > self.max_entry_bytes {
            call.settle(Verdict::Neutral);
            return Err(too_large(parts.len()));
        }
        // The bound counts the store's time, not the serialization's.
        let bound = self.bound(parts.len());
        let deadline = deadline_after(bound);
        let saved = if parts.len() < self.multipart_threshold {
            self.put_once(&path, &parts, deadline, bound).await
        } else {
            self.put_leased(&path, &parts, deadline, bound).await
        };
        call.settle(verdict(&saved));
        match saved {
            Ok(Saved::Uploaded) => Ok(()),
            Ok(Saved::Skipped) => {
                tracing::debug!(tier = %self.tier, object = %path, "upload skipped: another node saved it");
                Ok(())
            }
            Err(failed) => Err(failed.error),
        }
    }

    /// A `PUT` of `payload` to `path`, only if no object is there
    /// (`If-None-Match: *`; stores without conditional puts overwrite).
    async fn put_create(
        &self,
        path: &Path,
        payload: PutPayload,
        deadline: Instant,
        bound: Duration,
    ) -> Result<Saved, Failed> {
        let mut request = self.request(RequestOp::Put);
        request.sent = payload.content_length() as u64;
        let put = async {
            match self
                .store
                .put_opts(path, payload.clone(), PutMode::Create.into())
                .await
            {
                Err(object_store::Error::NotImplemented { .. }) => {
                    self.store.put(path, payload).await
                }
                other => other,
            }
        };
        match tokio::time::timeout_at(deadline.into(), put).await {
            Err(_elapsed) => Err(self.deadline_passed("save", bound)),
            Ok(Ok(_)) => {
                request.finish(RequestResult::Ok);
                Ok(Saved::Uploaded)
            }
            Ok(Err(e)) => {
                request.finish(result_of(&e));
                match e {
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. } => Ok(Saved::Skipped),
                    e => Err(self.failure("save", e)),
                }
            }
        }
    }

    /// The whole object in one conditional `PUT`.
    async fn put_once(
        &self,
        path: &Path,
        parts: &ValueParts,
        deadline: Instant,
        bound: Duration,
    ) -> Result<Saved, Failed> {
        let payload = PutPayload::from_iter(slices(parts, 0..parts.len()));
        self.put_create(path, payload, deadline, bound).await
    }

    /// A multipart upload by the one node that holds the lease on `path`.
    async fn put_leased(
        &self,
        path: &Path,
        parts: &ValueParts,
        deadline: Instant,
        bound: Duration,
    ) -> Result<Saved, Failed> {
        let lease = Path::from(format!("{path}{LEASE_SUFFIX}"));
        let claim = || {
            let stamp = format!("tierscope upload lease, bound {} ms\n", bound.as_millis());
            self.put_create(&lease, PutPayload::from(stamp), deadline, bound)
        };
        if let Saved::Skipped = claim().await? {
            // Another node is uploading, or died doing it: its lease says
            // when it started; one older than twice the upload's bound is
            // abandoned.
            let stale = match self.head(&lease, deadline, "save").await? {
                None => true,
                Some(meta) => {
                    let age = SystemTime::now()
                        .duration_since(SystemTime::from(meta.last_modified))
                        .unwrap_or_default();
                    age > bound.saturating_mul(2)
                }
            };
            if !stale {
                return Ok(Saved::Skipped);
            }
            tracing::info!(tier = %self.tier, object = %path, "replacing an abandoned upload lease");
            self.delete(&lease, deadline).await?;
            if let Saved::Skipped = claim().await? {
                return Ok(Saved::Skipped);
            }
        }
        // The lease may have been freed by a node that just finished.
        let uploaded = match self.head(path, deadline, "save").await {
            Ok(Some(_)) => Ok(Saved::Skipped),
            Ok(None) => self.multipart(path, parts, deadline, bound).await,
            Err(failed) => Err(failed),
        };
        if let Err(failed) = self.delete(&lease, deadline_after(self.timeout)).await {
            tracing::warn!(
                tier = %self.tier,
                object = %lease,
                error = &failed.error as &dyn std::error::Error,
                "unable to delete an upload lease (it goes stale)",
            );
        }
        uploaded
    }

    /// Upload `parts` in parts of `part_bytes`, `upload_concurrency` at a
    /// time; abort on failure.
    async fn multipart(
        &self,
        path: &Path,
        parts: &ValueParts,
        deadline: Instant,
        bound: Duration,
    ) -> Result<Saved, Failed> {
        let request = self.request(RequestOp::CreateMultipart);
        let created = tokio::time::timeout_at(
            deadline.into(),
            self.store.put_multipart_opts(path, Default::default()),
        )
        .await;
        let mut upload = match created {
            Err(_elapsed) => return Err(self.deadline_passed("save", bound)),
            Ok(Err(e)) => {
                request.finish(result_of(&e));
                return Err(self.failure("save", e));
            }
            Ok(Ok(upload)) => {
                request.finish(RequestResult::Ok);
                upload
            }
        };
        let total = parts.len();
        let mut uploads = Vec::new();
        let mut start = 0;
        while start < total {
            let end = (start + self.part_bytes).min(total);
            let payload = PutPayload::from_iter(slices(parts, start..end));
            uploads.push((end - start, upload.put_part(payload)));
            start = end;
        }
        let uploads: Vec<BoxFuture<'_, object_store::Result<()>>> = uploads
            .into_iter()
            .map(|(len, part)| {
                let mut request = self.request(RequestOp::PutPart);
                request.sent = len;
                async move {
                    let outcome = part.await;
                    request.finish_with(&outcome);
                    outcome
                }
                .boxed()
            })
            .collect();
        let sent = async {
            let mut in_flight = stream::iter(uploads).buffer_unordered(self.upload_concurrency);
            while let Some(outcome) = in_flight.next().await {
                outcome?;
            }
            Ok::<_, object_store::Error>(())
        };
        let result = async {
            tokio::time::timeout_at(deadline.into(), sent)
                .await
                .map_err(|_| self.deadline_passed("save", bound))?
                .map_err(|e| self.failure("save", e))?;
            let request = self.request(RequestOp::CompleteMultipart);
            let completed = tokio::time::timeout_at(deadline.into(), upload.complete())
                .await
                .map_err(|_| self.deadline_passed("save", bound))?;
            request.finish_with(&completed);
            completed.map_err(|e| self.failure("save", e))
        }
        .await;
        match result {
            Ok(_) => Ok(Saved::Uploaded),
            Err(failed) => {
                let request = self.request(RequestOp::AbortMultipart);
                let aborted =
                    tokio::time::timeout_at(deadline_after(self.timeout).into(), upload.abort())
                        .await;
                if let Ok(outcome) = aborted {
                    request.finish_with(&outcome);
                }
                Err(failed)
            }
        }
    }
}

/// The bytes `range` of the value `header | artifact | tag`, as slices of
/// their buffers (no copy of the artifact).
fn slices(parts: &ValueParts, range: std::ops::Range<u64>) -> Vec<Bytes> {
    let header = entry::HEADER_LEN as u64;
    let artifact = parts.artifact.len() as u64;
    let pieces = [
        (0, header, Piece::Header),
        (header, header + artifact, Piece::Artifact),
        (
            header + artifact,
            header + artifact + MAC_LEN as u64,
            Piece::Tag,
        ),
    ];
    let mut out = Vec::with_capacity(3);
    for (from, to, piece) in pieces {
        let (lo, hi) = (range.start.max(from), range.end.min(to));
        if lo >= hi {
            continue;
        }
        let (lo, hi) = ((lo - from) as usize, (hi - from) as usize);
        out.push(match piece {
            Piece::Header => Bytes::copy_from_slice(&parts.header[lo..hi]),
            Piece::Artifact => parts.artifact.slice(lo..hi),
            Piece::Tag => Bytes::copy_from_slice(&parts.tag[lo..hi]),
        });
    }
    out
}

enum Piece {
    Header,
    Artifact,
    Tag,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_value_exactly_without_copying_the_artifact() {
        let artifact = Bytes::from((0..1000u32).map(|i| i as u8).collect::<Vec<_>>());
        let parts = ValueParts {
            header: [1; entry::HEADER_LEN],
            artifact: artifact.clone(),
            tag: [2; MAC_LEN],
        };
        let whole = parts.concat();
        for step in [1u64, 7, 128, 500, 2000] {
            let mut joined = Vec::new();
            let mut start = 0;
            while start < parts.len() {
                let end = (start + step).min(parts.len());
                for s in slices(&parts, start..end) {
                    if s.len() > 16 && s[..] == artifact[..s.len()] {
                        // slices of the artifact share its buffer
                        assert!(artifact.as_ptr_range().contains(&s.as_ptr()));
                    }
                    joined.extend_from_slice(&s);
                }
                start = end;
            }
            assert_eq!(joined, whole, "step {step}");
        }
    }
}
