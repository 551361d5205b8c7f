//! The save path: serialize, write a locked read-only temporary file, and
//! under the directory's lock rename it into place and evict.

use std::{
    fs::{self, File},
    time::SystemTime,
};

use wasmer::{Engine, Module};
use wasmer_types::ModuleHash;

use super::*;

impl FileSystemCache {
    pub(super) fn save_blocking(
        &self,
        key: ModuleHash,
        engine: &Engine,
        module: &Module,
    ) -> Result<(), CacheError> {
        let shared = &self.shared;
        let ident = ident_of(engine);
        let artifact = module.serialize()?;
        weights::record(key, engine_key(engine), artifact.len() as u64);
        let file_len = (entry::HEADER_LEN + artifact.len()) as u64;
        if file_len > shared.max_entry {
            return Err(CacheError::TooLarge {
                tier: disk_tier_name(),
                size: file_len,
                limit: shared.max_entry,
            });
        }
        let rel = rel_path(&key, &ident);
        let path = shared.root.join(&rel);
        let dir = shared.root.join(&ident.namespace);
        self.ensure_trusted(None)?;
        create_dir(&dir, shared.shared_directory).map_err(|error| CacheError::FileWrite {
            path: dir.clone(),
            error,
        })?;
        // Created just now, by us or (racing) by someone else: check it.
        self.ensure_trusted(Some(&dir))?;
        let tmp = temp_path(&dir, &key);
        let mut header = entry::encode_header(&key, &ident, &artifact);
        if let Some(ring) = &shared.mac {
            let tag = ring.sign_disk_entry(&rel, &header, &artifact);
            header[entry::MAC_RANGE].copy_from_slice(&tag);
        }
        let file = match write_locked(
            &tmp,
            &[&header, &artifact],
            shared.sync_data,
            shared.shared_directory,
        ) {
            Ok(file) => file,
            Err(error) => {
                let _ = fs::remove_file(&tmp);
                return Err(CacheError::FileWrite { path, error });
            }
        };
        // Make the entry visible, learn what others wrote, and evict, all
        // under the directory lock so the bound holds for the directory.
        let replaced = self.with_dir_lock(shared.lock_timeout, |this, others_changed| {
            if others_changed && let Err(e) = this.scan_into_index() {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            if let Err(error) = fs::rename(&tmp, &path) {
                let _ = fs::remove_file(&tmp);
                return Err(CacheError::FileWrite {
                    path: path.clone(),
                    error,
                });
            }
            let now = SystemTime::now();
            let replaced = this.shared.index.lock().insert(
                rel.clone(),
                Meta {
                    bytes: file_len,
                    touched: now,
                    created: Some(now),
                },
            );
            this.enforce_bound(Some(&rel));
            Ok((replaced, true))
        })?;
        let Some(replaced) = replaced else {
            let _ = fs::remove_file(&tmp);
            return Err(CacheError::Timeout {
                op: "save",
                tier: disk_tier_name(),
                after: shared.lock_timeout,
            });
        };
        if shared.sync_data {
            // Make the rename itself durable.
            if let Ok(d) = File::open(&dir) {
                let _ = d.sync_all();
            }
        }
        drop(file); // releases the temporary file's lock
        if let Some(old) = replaced {
            self.report(EvictionCause::Replaced, old);
        }
        shared.observers.resident(self.residency());
        Ok(())
    }
}
