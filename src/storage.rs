//! The snapshot under `storage.path` (`docs/design.md`, "Surviving a restart"): written at
//! an interval and at shutdown, read once at start.
//!
//! The file is `proto/fanin/v1/snapshot.proto`'s `SnapshotFile`: a header (magic, format,
//! CRC-32 of the body) and the body, the store's `Snapshot` (which says when and by which
//! version it was written). It is replaced whole: written to `fanin.snapshot.tmp`, fsynced, renamed over
//! `fanin.snapshot`, and the directory fsynced, so a crash at any moment leaves the previous
//! snapshot or the new one, never a mix.
//!
//! A snapshot that cannot be used (unreadable, not a snapshot, a newer format, a checksum
//! that does not match, a body that does not hold together, a directory in its place) is
//! moved aside to `fanin.snapshot.refused-<unix seconds>`, never deleted, and named in the
//! log; fanin then starts empty. One fanin uses a directory at a time (`fanin.lock`, an
//! advisory lock held while it runs).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::config::StorageConfig;
use crate::model::unix_nanos;
use crate::proto::v1::snapshot as pb;
use crate::store::{Restored, Store, StoreSettings};

/// The snapshot's file name in `storage.path`.
pub const FILE: &str = "fanin.snapshot";
/// The format this fanin writes, and the newest it reads.
pub const FORMAT: u32 = 1;
const MAGIC: &str = "fanin snapshot";
const TEMPORARY: &str = "fanin.snapshot.tmp";
const LOCK: &str = "fanin.lock";

/// Why storage cannot be used at all; fanin does not start.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage.path {path}: {message}")]
    Directory { path: PathBuf, message: String },
    #[error(
        "storage.path {path}: the snapshot cannot be used ({reason}) and cannot be moved aside \
         ({error}); move it away yourself, fanin does not overwrite it"
    )]
    Stuck {
        path: PathBuf,
        reason: String,
        error: std::io::Error,
    },
}

/// The directory a fanin keeps its snapshot in, locked for as long as this lives.
#[derive(Debug)]
pub struct Storage {
    dir: PathBuf,
    interval: Duration,
    /// One write at a time: a periodic write cut short by shutdown still runs on its thread
    /// when the last one starts, and both use the one temporary file.
    writing: std::sync::Mutex<()>,
    /// Held while this fanin runs: a second fanin on the same directory is refused.
    _lock: nix::fcntl::Flock<File>,
}

/// What was found at start.
#[derive(Debug)]
pub enum Loaded {
    /// No snapshot yet.
    Nothing,
    Restored {
        restored: Restored,
        /// How long before now it was written.
        age: Duration,
    },
    /// Moved aside to `aside`: fanin starts empty.
    Refused { reason: String, aside: PathBuf },
}

/// What one write did.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub bytes: u64,
    pub instances: u64,
    pub streams: u64,
    pub took: Duration,
}

impl Storage {
    /// The directory `config.path` names (created with mode 0700 if missing), locked;
    /// `None` when storage is off.
    ///
    /// # Errors
    /// [`StorageError::Directory`] when it cannot be created, is not a directory, cannot be
    /// written, or another fanin holds it.
    pub fn open(config: &StorageConfig) -> Result<Option<Storage>, StorageError> {
        let Some(dir) = &config.path else {
            return Ok(None);
        };
        let failed = |message: String| StorageError::Directory {
            path: dir.clone(),
            message,
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|error| failed(format!("cannot create it: {error}")))?;
            tracing::info!(path = %dir.display(), "Created the storage directory (mode 0700)");
        }
        if !dir.is_dir() {
            return Err(failed("is not a directory".into()));
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(LOCK))
            .map_err(|error| failed(format!("cannot write in it: {error}")))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| {
                failed(format!(
                    "another fanin uses it ({LOCK} is locked: {errno}); give each its own"
                ))
            })?;
        Ok(Some(Storage {
            dir: dir.clone(),
            interval: config.interval,
            writing: std::sync::Mutex::new(()),
            _lock: lock,
        }))
    }

    /// Where the snapshot is.
    pub fn file(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// A store holding the snapshot, if there is one that can be used; an empty one
    /// otherwise, with the snapshot moved aside.
    ///
    /// # Errors
    /// [`StorageError::Stuck`] when a snapshot that cannot be used cannot be moved aside
    /// either: starting would overwrite it at the first write.
    pub fn load(&self, settings: StoreSettings) -> Result<(Store, Loaded), StorageError> {
        let path = self.file();
        let read = match fs::symlink_metadata(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Store::new(settings), Loaded::Nothing));
            }
            Err(error) => Err(format!("cannot look at it: {error}")),
            Ok(metadata) if !metadata.is_file() => {
                Err("it is not a regular file (a directory in its place?)".to_string())
            }
            Ok(_) => fs::read(&path)
                .map_err(|error| format!("cannot read it: {error}"))
                .and_then(|bytes| decode(Bytes::from(bytes))),
        };
        let refused = match read {
            Ok(snapshot) => match Store::restored(settings.clone(), &snapshot) {
                Ok((store, restored)) => {
                    let written = UNIX_EPOCH + Duration::from_nanos(snapshot.written_unix_nano);
                    let age = SystemTime::now()
                        .duration_since(written)
                        .unwrap_or_default();
                    return Ok((store, Loaded::Restored { restored, age }));
                }
                Err(error) => format!("its content does not hold together: {error}"),
            },
            Err(reason) => reason,
        };
        let aside = self
            .move_aside(&path)
            .map_err(|error| StorageError::Stuck {
                path: path.clone(),
                reason: refused.clone(),
                error,
            })?;
        Ok((
            Store::new(settings),
            Loaded::Refused {
                reason: refused,
                aside,
            },
        ))
    }

    /// Renames `path` to a name no other file has, `fanin.snapshot.refused-<seconds>[-n]`.
    fn move_aside(&self, path: &Path) -> std::io::Result<PathBuf> {
        let seconds = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        for attempt in 0..1000 {
            let name = match attempt {
                0 => format!("{FILE}.refused-{seconds}"),
                n => format!("{FILE}.refused-{seconds}-{n}"),
            };
            let aside = self.dir.join(name);
            if fs::symlink_metadata(&aside).is_ok() {
                continue;
            }
            fs::rename(path, &aside)?;
            sync_directory(&self.dir)?;
            return Ok(aside);
        }
        Err(std::io::Error::other("no free name to move it to"))
    }

    /// Writes a snapshot of `store`, replacing the previous one whole.
    ///
    /// # Errors
    /// The file system's error; the previous snapshot is left as it was.
    pub fn write(&self, store: &Store) -> std::io::Result<Written> {
        let _one = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let began = Instant::now();
        let body = store.snapshot();
        let header = pb::Header {
            magic: MAGIC.to_string(),
            format: FORMAT,
            body_crc32: crc32fast::hash(&body.bytes),
        };
        // The SnapshotFile's encoding, written in parts so that the body is not copied.
        let mut head = Vec::with_capacity(128);
        prost::encoding::message::encode(1, &header, &mut head);
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut head);
        prost::encoding::encode_varint(body.bytes.len() as u64, &mut head);
        let temporary = self.dir.join(TEMPORARY);
        let replaced = (|| {
            // Not through a link someone else put there.
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temporary)?;
            file.write_all(&head)?;
            file.write_all(&body.bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&temporary, self.file())?;
            sync_directory(&self.dir)
        })();
        if let Err(error) = replaced {
            // A disk that filled up keeps no half-written file.
            let _ = fs::remove_file(&temporary);
            return Err(error);
        }
        let written = Written {
            bytes: (head.len() + body.bytes.len()) as u64,
            instances: body.instances,
            streams: body.streams,
            took: began.elapsed(),
        };
        store
            .stats()
            .storage()
            .written(written.bytes, written.took, unix_nanos(SystemTime::now()));
        Ok(written)
    }

    /// Writes a snapshot every `storage.interval` until `shutdown`, each on a thread of its
    /// own in the background of ingest (`SCHED_IDLE`), never on the threads that receive.
    pub async fn run(self: std::sync::Arc<Self>, store: Store, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(self.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once; the store was just restored or is empty.
        interval.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {
                    self.write_in_background(&store).await;
                }
            }
        }
    }

    async fn write_in_background(self: &std::sync::Arc<Self>, store: &Store) {
        let (reply, written) = tokio::sync::oneshot::channel();
        let storage = std::sync::Arc::clone(self);
        let store = store.clone();
        let started = std::thread::Builder::new()
            .name("fanin-snapshot".into())
            .spawn(move || {
                // Best effort: at normal priority the snapshot still runs off the receivers.
                let _ = crate::sys::run_in_background();
                let _ = reply.send(storage.write_logged(&store));
            });
        if let Err(error) = started {
            tracing::warn!(%error, "Cannot start the snapshot thread; the snapshot is not written");
            return;
        }
        let _ = written.await;
    }

    /// [`Storage::write`], with a failure logged and counted.
    pub fn write_logged(&self, store: &Store) -> Option<Written> {
        match self.write(store) {
            Ok(written) => {
                tracing::debug!(
                    bytes = written.bytes,
                    streams = written.streams,
                    took_ms = written.took.as_millis() as u64,
                    "Wrote the snapshot"
                );
                Some(written)
            }
            Err(error) => {
                store.stats().storage().failed();
                tracing::warn!(path = %self.file().display(), %error, "Cannot write the snapshot; the previous one stays");
                None
            }
        }
    }
}

fn sync_directory(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The body of a snapshot file, checked: magic, format, checksum.
fn decode(bytes: Bytes) -> Result<pb::Snapshot, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let file = pb::SnapshotFile::decode(bytes)
        .map_err(|error| format!("it is not a snapshot or is truncated ({error})"))?;
    let header = file
        .header
        .ok_or("it is not a snapshot or is truncated (no header)")?;
    if header.magic != MAGIC {
        return Err("it is not a fanin snapshot (no magic)".into());
    }
    if header.format == 0 {
        return Err("it names no format (0 is none fanin wrote)".into());
    }
    if header.format > FORMAT {
        return Err(format!(
            "it is in format {}, newer than the format {FORMAT} this fanin ({}) reads: a newer \
             fanin wrote it, or the file is damaged",
            header.format,
            env!("CARGO_PKG_VERSION")
        ));
    }
    let crc = crc32fast::hash(&file.body);
    if crc != header.body_crc32 {
        return Err(format!(
            "its checksum does not match (CRC-32 {crc:08x}, the header says {:08x}): the file is damaged or truncated",
            header.body_crc32
        ));
    }
    pb::Snapshot::decode(file.body).map_err(|error| format!("its body cannot be decoded ({error})"))
}
