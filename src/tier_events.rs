//! How a tier tells the outside world about events no single call returns:
//! evictions, its resident size, its availability and (remote tiers) the
//! requests it sends.
//!
//! Tiers know nothing of metrics; they call a [`TierObserver`] that the spy
//! decorator ([`crate::Instrumented`]) attaches through
//! [`crate::Control::AttachObserver`].

use std::{fmt::Debug, sync::Arc, time::Duration};

use parking_lot::RwLock;

/// Why a tier dropped an entry: the `cause` label of
/// `tierscope_evictions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EvictionCause {
    /// Dropped to stay within the tier's byte bound.
    Capacity,
    /// Its time to live passed.
    Expired,
    /// Removed on request.
    Explicit,
    /// Overwritten by a newer save of the same key.
    Replaced,
    /// Found corrupt (or failing integrity) and removed.
    Corrupt,
    /// Its machine code belongs to an engine that was retired (an engine
    /// switch of [`crate::EngineRecycling`], or
    /// [`crate::forget_engine`]): in-process tiers only.
    Retired,
}

impl EvictionCause {
    /// Every cause, in label order.
    pub const ALL: [EvictionCause; 6] = [
        EvictionCause::Capacity,
        EvictionCause::Expired,
        EvictionCause::Explicit,
        EvictionCause::Replaced,
        EvictionCause::Corrupt,
        EvictionCause::Retired,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            EvictionCause::Capacity => "capacity",
            EvictionCause::Expired => "expired",
            EvictionCause::Explicit => "explicit",
            EvictionCause::Replaced => "replaced",
            EvictionCause::Corrupt => "corrupt",
            EvictionCause::Retired => "retired",
        }
    }
}

/// One entry a tier dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eviction {
    /// Why.
    pub cause: EvictionCause,
    /// Serialized artifact bytes of the entry.
    pub bytes: u64,
    /// Time from insert to eviction, when the tier knows it.
    pub age: Option<Duration>,
}

/// What a tier holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Residency {
    /// Entries resident.
    pub entries: u64,
    /// Serialized artifact bytes resident.
    pub bytes: u64,
    /// The configured bound, `None` for unbounded tiers.
    pub capacity: Option<u64>,
}

/// One request a remote tier sent to its store (the object-store tier
/// reports each; what it costs is what a bill counts): the
/// `tierscope_remote_requests_total` and
/// `tierscope_remote_transferred_bytes_total` metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRequest {
    /// What was asked.
    pub op: RequestOp,
    /// How it ended.
    pub result: RequestResult,
    /// Bytes of payload sent (request bodies).
    pub sent: u64,
    /// Bytes of payload received (response bodies).
    pub received: u64,
}

/// The kind of a [`RemoteRequest`]: the `op` label of
/// `tierscope_remote_requests_total` (object stores bill by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestOp {
    /// Read an object (`GET`).
    Get,
    /// Ask for an object's metadata (`HEAD`).
    Head,
    /// Write an object in one request (`PUT`).
    Put,
    /// Start a multipart upload.
    CreateMultipart,
    /// Upload one part of a multipart upload.
    PutPart,
    /// Complete a multipart upload.
    CompleteMultipart,
    /// Abort a multipart upload.
    AbortMultipart,
    /// Delete an object.
    Delete,
}

impl RequestOp {
    /// Every op, in label order.
    pub const ALL: [RequestOp; 8] = [
        RequestOp::Get,
        RequestOp::Head,
        RequestOp::Put,
        RequestOp::CreateMultipart,
        RequestOp::PutPart,
        RequestOp::CompleteMultipart,
        RequestOp::AbortMultipart,
        RequestOp::Delete,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOp::Get => "get",
            RequestOp::Head => "head",
            RequestOp::Put => "put",
            RequestOp::CreateMultipart => "create_multipart",
            RequestOp::PutPart => "put_part",
            RequestOp::CompleteMultipart => "complete_multipart",
            RequestOp::AbortMultipart => "abort_multipart",
            RequestOp::Delete => "delete",
        }
    }
}

/// How a [`RemoteRequest`] ended: the `result` label of
/// `tierscope_remote_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestResult {
    /// The store did what was asked.
    Ok,
    /// No such object.
    NotFound,
    /// A condition failed: the object already exists (a conditional put
    /// that lost a race, which is how an upload is skipped).
    Conflict,
    /// The store answered with an error, or the connection failed.
    Error,
    /// Not finished within the tier's time bound (or abandoned by its
    /// caller).
    Timeout,
}

impl RequestResult {
    /// Every result, in label order.
    pub const ALL: [RequestResult; 5] = [
        RequestResult::Ok,
        RequestResult::NotFound,
        RequestResult::Conflict,
        RequestResult::Error,
        RequestResult::Timeout,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestResult::Ok => "ok",
            RequestResult::NotFound => "not_found",
            RequestResult::Conflict => "conflict",
            RequestResult::Error => "error",
            RequestResult::Timeout => "timeout",
        }
    }
}

/// Receives a tier's evictions and size changes. Called off the hit path
/// (after saves, evictions and removals), never while a tier holds a lock.
pub trait TierObserver: Send + Sync + Debug {
    /// An entry was dropped.
    fn evicted(&self, eviction: Eviction);
    /// The tier's residency changed (also called once on attach).
    fn resident(&self, residency: Residency);
    /// The tier's availability changed (remote tiers with a circuit breaker;
    /// also called once on attach by such tiers).
    fn available(&self, available: bool) {
        let _ = available;
    }
    /// The tier verifies artifacts before wasmer sees them and says how in
    /// each hit ([`crate::Hit::verified`]): called once on attach by such
    /// tiers (disk, Redis).
    fn verifies(&self) {}
    /// Said once, on attach, by a tier that will report its requests
    /// ([`TierObserver::request`]): the spy registers their metrics then,
    /// with the recorder of the tier's construction.
    fn will_report_requests(&self) {}
    /// A remote tier finished one request to its store (the object-store
    /// tier reports every request it sends).
    fn request(&self, request: RemoteRequest) {
        let _ = request;
    }
}

/// The observers attached to one tier. Tiers embed one and call
/// [`Observers::evicted`] / [`Observers::resident`].
#[derive(Debug, Default)]
pub struct Observers {
    list: RwLock<Vec<Arc<dyn TierObserver>>>,
}

impl Observers {
    /// Attach one more observer and tell it the current residency, when
    /// the tier knows it (a remote tier does not).
    pub fn attach(&self, observer: Arc<dyn TierObserver>, now: Option<Residency>) {
        if let Some(now) = now {
            observer.resident(now);
        }
        self.list.write().push(observer);
    }

    /// True when nobody listens (lets tiers skip work).
    pub fn is_empty(&self) -> bool {
        self.list.read().is_empty()
    }

    /// Report one eviction to every observer.
    pub fn evicted(&self, eviction: Eviction) {
        for o in self.list.read().iter() {
            o.evicted(eviction);
        }
    }

    /// Report the residency to every observer.
    pub fn resident(&self, residency: Residency) {
        for o in self.list.read().iter() {
            o.resident(residency);
        }
    }

    /// Report availability to every observer.
    #[cfg(any(feature = "redis", feature = "objects"))]
    pub fn available(&self, available: bool) {
        for o in self.list.read().iter() {
            o.available(available);
        }
    }

    /// Report one request to every observer.
    #[cfg(feature = "objects")]
    pub fn request(&self, request: RemoteRequest) {
        for o in self.list.read().iter() {
            o.request(request);
        }
    }
}
