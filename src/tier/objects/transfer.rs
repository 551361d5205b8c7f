//! Loads and look-ups: one `GET` streamed into one aligned buffer and
//! MAC-checked as it arrives, then opened; `HEAD` for `contains`; deleting
//! an object that failed verification.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use futures::StreamExt;
use object_store::{GetOptions, ObjectStoreExt, path::Path};
use wasmer::Engine;
use wasmer_types::ModuleHash;

use crate::{
    aligned::AlignedBuf,
    cache::{CacheError, Hit, IntegrityFailure},
    engine::{engine_key, ident_of},
    tier::{
        breaker::deadline_after,
        remote_value::{self, MAC_LEN, Rejected, Verifier, entry_len},
    },
    tier_events::{Eviction, EvictionCause, RequestOp, RequestResult},
    weights,
};

use super::store::{Failed, Shared, result_of, verdict};

/// Bytes hashed at once while an object streams in: large enough for
/// BLAKE3's wide SIMD paths, small enough to stay in cache after the copy.
const HASH_BATCH: usize = 256 << 10;

/// What one `GET` found.
enum Fetched {
    Missing,
    /// Larger than the limit, by the size its response announced.
    TooLarge(u64),
    /// The whole object in an aligned buffer, its entry already fed to the
    /// MAC check.
    Value {
        value: Bytes,
        verifier: Verifier,
        e_tag: Option<String>,
    },
    /// Too short to hold a MAC.
    Short(u64, Option<String>),
}

impl Shared {
    pub(super) async fn load(
        self: &Arc<Self>,
        key: ModuleHash,
        engine: &Engine,
    ) -> Result<Hit, CacheError> {
        let ident = ident_of(engine);
        let path = self.path(&key, &ident);
        let started = Instant::now();
        let call = self.admit("load", deadline_after(self.timeout)).await?;
        let fetched = self.fetch(&path, started).await;
        call.settle(verdict(&fetched));
        let (value, verifier, e_tag) = match fetched.map_err(|f| f.error)? {
            Fetched::Missing => return Err(CacheError::NotFound),
            Fetched::TooLarge(size) => {
                self.discard(&path, None, size, |now| now > self.max_entry_bytes)
                    .await;
                return Err(CacheError::Integrity {
                    location: self.location(&path),
                    reason: IntegrityFailure::Oversized {
                        bytes: size,
                        limit: self.max_entry_bytes,
                        read: 0,
                    },
                });
            }
            Fetched::Short(size, e_tag) => {
                self.discard(&path, e_tag, size, |now| now == size).await;
                return Err(CacheError::Integrity {
                    location: self.location(&path),
                    reason: IntegrityFailure::ShorterThanMac {
                        bytes: size,
                        mac_len: MAC_LEN as u64,
                    },
                });
            }
            Fetched::Value {
                value,
                verifier,
                e_tag,
            } => (value, verifier, e_tag),
        };
        let size = value.len() as u64;
        let big = size >= self.blocking_threshold;
        let opened = {
            let engine = engine.clone();
            self.cpu(big, move || {
                let entry_len = value.len() - MAC_LEN;
                let tag: &[u8; MAC_LEN] = value[entry_len..].try_into().expect("MAC_LEN bytes");
                let value = verifier.finish(value.slice(..entry_len), tag)?;
                remote_value::open(value, &key, &ident, &engine)
            })
            .await?
        };
        match opened {
            Ok((module, artifact_len)) => {
                weights::record(key, engine_key(engine), artifact_len);
                Ok(Hit::new(module).with_bytes(Some(artifact_len)))
            }
            Err(rejected) => {
                if !matches!(rejected, Rejected::Deserialize(_)) {
                    self.discard(&path, e_tag, size, |now| now == size).await;
                }
                Err(rejected.into_error(self.location(&path)))
            }
        }
    }

    /// One `GET` of `path`: headers within the timeout, the body within
    /// the bound of its size, streamed into one aligned buffer and fed to
    /// the MAC check as it arrives.
    async fn fetch(&self, path: &Path, started: Instant) -> Result<Fetched, Failed> {
        let mut request = self.request(RequestOp::Get);
        let headers = tokio::time::timeout_at(
            deadline_after(self.timeout).into(),
            self.store.get_opts(path, GetOptions::default()),
        )
        .await;
        let response = match headers {
            Err(_elapsed) => return Err(self.deadline_passed("load", self.timeout)),
            Ok(outcome) => match outcome {
                Err(object_store::Error::NotFound { .. }) => {
                    request.finish(RequestResult::NotFound);
                    return Ok(Fetched::Missing);
                }
                Err(e) => {
                    request.finish(result_of(&e));
                    return Err(self.failure("load", e));
                }
                Ok(response) => response,
            },
        };
        let size = response.meta.size;
        let e_tag = response.meta.e_tag.clone();
        if size > self.max_entry_bytes {
            // Dropping the body closes the connection: only what was in
            // flight was transferred.
            drop(response);
            request.finish(RequestResult::Ok);
            return Ok(Fetched::TooLarge(size));
        }
        let Ok(entry_len) = entry_len(size) else {
            let body = response.bytes().await;
            request.received = body.as_ref().map_or(0, |b| b.len() as u64);
            request.finish_with(&body);
            return match body {
                Ok(_) => Ok(Fetched::Short(size, e_tag)),
                Err(e) => Err(self.failure("load", e)),
            };
        };
        let bound = self.bound(size);
        let deadline = started + bound;
        let mut buf = AlignedBuf::zeroed(size as usize)
            .map_err(|e| Failed::answered(CacheError::other(e)))?;
        let mut verifier = self.signing.verifier(path.as_ref().as_bytes());
        let (entry_len, mut filled, mut hashed) = (entry_len as usize, 0usize, 0usize);
        let mut stream = response.into_stream();
        let streamed = tokio::time::timeout_at(deadline.into(), async {
            let out = buf.as_mut_slice();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                let Some(room) = out.get_mut(filled..filled + chunk.len()) else {
                    // More than the response announced: not this object.
                    return Ok(false);
                };
                room.copy_from_slice(&chunk);
                filled += chunk.len();
                let ready = filled.min(entry_len);
                if ready - hashed >= HASH_BATCH || ready == entry_len {
                    verifier.update(&out[hashed..ready]);
                    hashed = ready;
                }
            }
            Ok::<_, object_store::Error>(filled == out.len())
        })
        .await;
        request.received = filled as u64;
        match streamed {
            Err(_elapsed) => Err(self.deadline_passed("load", bound)),
            Ok(Err(e)) => {
                let failed = self.failure("load", e);
                request.finish(RequestResult::Error);
                Err(failed)
            }
            Ok(Ok(whole)) => {
                request.finish(RequestResult::Ok);
                if !whole {
                    // The store sent another length than it announced: a
                    // broken store or a replaced object; nothing to trust.
                    return Err(Failed::answered(CacheError::Integrity {
                        location: self.location(path),
                        reason: IntegrityFailure::MacMismatch {
                            bytes: filled as u64,
                        },
                    }));
                }
                if hashed < entry_len {
                    verifier.update(&buf.as_ref()[hashed..entry_len]);
                }
                Ok(Fetched::Value {
                    value: buf.into_bytes(),
                    verifier,
                    e_tag,
                })
            }
        }
    }

    pub(super) async fn contains(
        self: &Arc<Self>,
        key: ModuleHash,
        engine: &Engine,
    ) -> Result<bool, CacheError> {
        let path = self.path(&key, &ident_of(engine));
        let deadline = deadline_after(self.timeout);
        let call = self.admit("contains", deadline).await?;
        let found = self.head(&path, deadline, "contains").await;
        call.settle(verdict(&found));
        found.map(|meta| meta.is_some()).map_err(|f| f.error)
    }

    /// `HEAD path`, within `deadline`: the object's metadata, `None` for
    /// no object.
    pub(super) async fn head(
        &self,
        path: &Path,
        deadline: Instant,
        op: &'static str,
    ) -> Result<Option<object_store::ObjectMeta>, Failed> {
        let request = self.request(RequestOp::Head);
        match tokio::time::timeout_at(deadline.into(), self.store.head(path)).await {
            Err(_elapsed) => Err(self.deadline_passed(op, self.timeout)),
            Ok(outcome) => {
                request.finish_with(&outcome);
                match outcome {
                    Ok(meta) => Ok(Some(meta)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.failure(op, e)),
                }
            }
        }
    }

    /// `DELETE path`, within `deadline`.
    pub(super) async fn delete(&self, path: &Path, deadline: Instant) -> Result<(), Failed> {
        let request = self.request(RequestOp::Delete);
        match tokio::time::timeout_at(deadline.into(), self.store.delete(path)).await {
            Err(_elapsed) => Err(self.deadline_passed("delete", self.timeout)),
            Ok(outcome) => {
                request.finish_with(&outcome);
                match outcome {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(self.failure("delete", e)),
                }
            }
        }
    }

    /// Delete an object refused on a load, if it is still the one read:
    /// the same ETag (when the store gives one) and a size `still_bad`
    /// accepts; report it as a corrupt eviction. (A good object saved by
    /// another node meanwhile has another ETag and survives; the `HEAD`
    /// and the `DELETE` are two requests, and an object replaced between
    /// them is deleted too: the next save puts it back.)
    async fn discard(
        &self,
        path: &Path,
        e_tag: Option<String>,
        size: u64,
        still_bad: impl Fn(u64) -> bool,
    ) {
        let deadline = deadline_after(self.timeout);
        let outcome = async {
            let Some(meta) = self.head(path, deadline, "load").await? else {
                return Ok(false);
            };
            if !still_bad(meta.size) || (e_tag.is_some() && meta.e_tag != e_tag) {
                return Ok(false);
            }
            self.delete(path, deadline).await.map(|()| true)
        }
        .await;
        match outcome {
            Ok(true) => self.observers.evicted(Eviction {
                cause: EvictionCause::Corrupt,
                bytes: size,
                age: None,
            }),
            Ok(false) => {}
            Err(failed) => tracing::warn!(
                tier = %self.tier,
                object = %path,
                error = &failed.error as &dyn std::error::Error,
                "unable to delete an object that failed verification (the next save replaces it)",
            ),
        }
    }
}
