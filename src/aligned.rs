//! Byte buffers aligned for wasmer's zero-copy deserializer.
//!
//! `Module::deserialize` in wasmer 7.4.2 ends in `rkyv::access_unchecked`
//! on the artifact's metadata, with no copy to fix alignment:
//!
//! - `wasmer_types::MetadataHeader::parse` (wasmer-types 7.4.2,
//!   `src/serialize.rs`) refuses metadata that does not start on an 8-byte
//!   boundary ("misaligned metadata");
//! - `SerializableModule::archive_from_slice` (wasmer-compiler 7.4.2,
//!   `src/serialize.rs`) hands the slice after that header to
//!   `rkyv::access_unchecked`, whose contract (rkyv 0.8, `src/api/mod.rs`:
//!   "a valid archived type when accessed at the default root position",
//!   checked by `sanity_check_buffer` in debug builds) includes that the
//!   root and every archived object sit at their type's alignment, counted
//!   from the slice's first byte;
//! - the writer pads that metadata to `MetadataHeader::ALIGN` = 16 bytes
//!   (`serialize_module` in wasmer-compiler's `artifact_builder.rs` asserts
//!   the module's alignment is at most that), and the metadata starts 32
//!   bytes into the artifact (the 16-byte `wasmer-universal` magic, then the
//!   16-byte header).
//!
//! So an artifact must start on a 16-byte boundary ([`ARTIFACT_ALIGN`]).
//! tierscope's entries put a 128-byte header before the artifact
//! (`entry::HEADER_LEN`, a multiple of 16), so an entry whose *first* byte
//! is 16-byte aligned has its artifact aligned too. A mapped entry starts on
//! a page; a buffer read from a file or a socket is an [`AlignedBuf`],
//! aligned by construction (it is made of `u128` words) rather than by
//! whatever the allocator happens to return for a `Vec<u8>`.

use bytes::Bytes;

/// The alignment an artifact handed to `Module::deserialize` needs (see
/// the module docs).
pub(crate) const ARTIFACT_ALIGN: usize = 16;

/// Whether `bytes` starts on an [`ARTIFACT_ALIGN`] boundary.
#[inline]
pub(crate) fn is_aligned(bytes: &[u8]) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(ARTIFACT_ALIGN)
}

/// A zero-filled heap buffer of `len` bytes whose first byte is
/// [`ARTIFACT_ALIGN`]-aligned (its storage is `u128` words), which becomes
/// [`Bytes`] without a copy.
pub(crate) struct AlignedBuf {
    words: Box<[u128]>,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes, or an error if the memory cannot be
    /// had (never an abort: `len` may come from a file's header).
    pub(crate) fn zeroed(len: usize) -> Result<Self, OutOfMemory> {
        let n = len.div_ceil(std::mem::size_of::<u128>());
        // `alloc_zeroed`: fresh pages come zeroed from the system, untouched
        // until filled.
        let words =
            bytemuck::allocation::try_zeroed_slice_box::<u128>(n).map_err(|()| OutOfMemory(len))?;
        Ok(AlignedBuf { words, len })
    }

    /// The bytes, to fill.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u128, u8>(&mut self.words)[..self.len]
    }

    /// The buffer as shared [`Bytes`] (no copy; slices of it keep the
    /// buffer alive).
    pub(crate) fn into_bytes(self) -> Bytes {
        let bytes = Bytes::from_owner(self);
        debug_assert!(is_aligned(&bytes));
        bytes
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        &bytemuck::cast_slice::<u128, u8>(&self.words)[..self.len]
    }
}

/// An aligned buffer of this many bytes could not be allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cannot allocate an aligned buffer of {0} bytes")]
pub(crate) struct OutOfMemory(pub(crate) usize);

/// `bytes`, copied into an [`AlignedBuf`] unless it already starts on an
/// [`ARTIFACT_ALIGN`] boundary.
pub(crate) fn aligned(bytes: Bytes) -> Result<Bytes, OutOfMemory> {
    if is_aligned(&bytes) {
        return Ok(bytes);
    }
    let mut buf = AlignedBuf::zeroed(bytes.len())?;
    buf.as_mut_slice().copy_from_slice(&bytes);
    Ok(buf.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_start_aligned_at_every_length() {
        for len in [0, 1, 15, 16, 17, 128, 4097] {
            let mut b = AlignedBuf::zeroed(len).unwrap();
            assert_eq!(b.as_mut_slice().len(), len);
            b.as_mut_slice().fill(7);
            let bytes = b.into_bytes();
            assert_eq!(bytes.len(), len);
            assert!(is_aligned(&bytes), "len {len}");
            assert!(bytes.iter().all(|&x| x == 7));
        }
    }

    #[test]
    fn misaligned_bytes_are_copied_to_an_aligned_buffer() {
        let whole = AlignedBuf::zeroed(64).unwrap().into_bytes();
        let off = whole.slice(1..33);
        assert!(!is_aligned(&off));
        let fixed = aligned(off.clone()).unwrap();
        assert!(is_aligned(&fixed));
        assert_eq!(fixed, off);
        // Already aligned: the same bytes, not a copy.
        let at16 = whole.slice(16..48);
        assert_eq!(aligned(at16.clone()).unwrap().as_ptr(), at16.as_ptr());
    }

    #[test]
    fn an_absurd_length_is_an_error_not_an_abort() {
        assert!(AlignedBuf::zeroed(usize::MAX - 8).is_err());
    }
}
