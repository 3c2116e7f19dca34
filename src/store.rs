//! Durability: an append-only journal of deliveries plus bincode snapshots of
//! [`Persisted`], so that no acknowledged Slack event is lost across restarts.
//!
//! # Data directory layout
//!
//! | file | content |
//! |---|---|
//! | `LOCK` | exclusively `flock`ed while a [`Store`] is open (one process per directory) |
//! | `snapshot.bin` | the newest snapshot |
//! | `snapshot.prev.bin` | the snapshot before it: the fallback |
//! | `journal-<generation>.log` | deliveries, one generation per file (`journal-0000000007.log`) |
//! | `snapshot.tmp`, `journal.tmp` | a write in progress; removed at start-up |
//! | `snapshot[.prev].corrupt-<n>.bin`, `journal-<generation>.corrupt-<n>` | set aside by recovery for forensics, never read again |
//!
//! # Generations
//!
//! The journal is a sequence of files numbered from 1; appends go to the
//! highest. A snapshot records the generation `G` it was cut at: it contains
//! every delivery of generations `< G` and none of `≥ G`. Taking a snapshot
//! (1) rotates, i.e. creates generation `G = active + 1`, at the instant the
//! state is captured (both under the lock that serializes ingest), (2) writes
//! the snapshot atomically (temporary file, fsync, rename `snapshot.bin` to
//! `snapshot.prev.bin`, rename the temporary file to `snapshot.bin`, fsync the
//! directory), then (3) deletes the journals older than the *fallback*
//! snapshot's generation, so falling back never loses events either (until
//! there is a fallback, every journal from generation 1 is kept: the empty
//! state is the first snapshot's fallback).
//!
//! Start-up loads `snapshot.bin` (or, if it is missing or corrupt,
//! `snapshot.prev.bin`) and replays generations `≥ G` in order. A crash at any
//! step leaves either the old snapshot with every journal it needs or the new
//! one, whose `G` excludes the journals it already contains: nothing is lost
//! and nothing is applied twice, whatever the event ids.
//!
//! # Formats (integers little-endian)
//!
//! - Snapshot: a 48-byte header — magic `SESHATSN`, format version `u32`,
//!   reserved `u32`, generation `u64`, written-at µs `i64`, payload length `u64`,
//!   payload CRC-32 `u32`, CRC-32 of the preceding 44 header bytes `u32` —
//!   then the payload: `bincode` 2 (`config::standard()`) of [`Persisted`].
//! - Journal: a 24-byte header — magic `SESHATJL`, format version `u32`,
//!   generation `u64`, CRC-32 of the preceding 20 bytes `u32` — then records:
//!   payload length `u32`, payload CRC-32 `u32`, CRC-32 of those 8 bytes `u32`,
//!   payload (`bincode` 2 of a [`Delivery`]). The header checksum tells a
//!   damaged length (corruption) from a record cut short by a crash (torn).
//!
//! # Recovery rules
//!
//! - A torn last record (short, zero-filled, or failing its checksum at the
//!   very end of the file) is what a crash mid-write leaves, and such a record
//!   was never acknowledged: it is truncated with a warning. (A bit flip in the
//!   very last record cannot be told apart and gets the same treatment.)
//! - A record failing its checks with data after it is corruption: replay stops
//!   there with an error log; the file is copied aside as
//!   `journal-<generation>.corrupt-<n>` before being truncated, and later
//!   generations are renamed aside too, so nothing is deleted.
//! - A damaged journal *header* sets the whole file (and later ones) aside the same way.
//! - A corrupt snapshot is renamed aside and the previous one is loaded, with
//!   an error log; if neither loads, the state is rebuilt from the journals only
//!   when they reach back to generation 1, otherwise start-up is refused.
//! - A file of an unknown format version refuses start-up with advice.

use crate::engine::Persisted;
use crate::model::{Delivery, Status};
use crate::time::Micros;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Magic bytes opening every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"SESHATSN";
/// Magic bytes opening every journal file.
pub const JOURNAL_MAGIC: [u8; 8] = *b"SESHATJL";
/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// The journal format version this build writes and reads.
pub const JOURNAL_VERSION: u32 = 1;
/// The newest snapshot's file name.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
/// The fallback snapshot's file name.
pub const PREV_SNAPSHOT_FILE: &str = "snapshot.prev.bin";
/// Largest journal record payload accepted (a Slack body is at most 1 MiB).
pub const MAX_RECORD: u32 = 16 << 20;

const SNAPSHOT_HEADER_LEN: usize = 48;
const JOURNAL_HEADER_LEN: usize = 24;
const RECORD_HEADER_LEN: usize = 12;
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const JOURNAL_TMP: &str = "journal.tmp";
const PROBE_TMP: &str = "probe.tmp";
const LOCK_FILE: &str = "LOCK";

/// When journal writes reach the disk.
///
/// The trade-off: [`SyncPolicy::EveryRecord`] makes an acknowledged event
/// survive power loss, at the price of one disk flush per event; appends are
/// serialized (the server journals under its engine lock), so ingest is bounded
/// by the flush latency. [`SyncPolicy::GroupCommit`] acknowledges as soon as
/// the record is in the kernel's page cache and flushes in the background every
/// interval: ingest costs a memory copy, and a *process* crash (SIGKILL, panic,
/// OOM kill) still loses nothing because the page cache belongs to the kernel,
/// but a power loss or kernel crash loses the events acknowledged during the
/// last interval, and Slack does not resend acknowledged events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `fdatasync` after every record, before [`Store::append`] returns (the default).
    #[default]
    EveryRecord,
    /// Write to the page cache and let a background thread `fdatasync` every interval.
    GroupCommit(Duration),
}

impl SyncPolicy {
    /// `EveryRecord` for 0 ms, else group commit every `ms` milliseconds.
    pub fn from_millis(ms: u64) -> Self {
        if ms == 0 {
            SyncPolicy::EveryRecord
        } else {
            SyncPolicy::GroupCommit(Duration::from_millis(ms))
        }
    }
}

/// Why the store could not do what was asked; every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory cannot be created or written.
    #[error("data directory {} is not writable ({source}); fix its ownership or permissions, or set DATA_DIR to a writable directory", .dir.display())]
    NotWritable {
        /// The directory.
        dir: PathBuf,
        /// The refused operation's error.
        #[source]
        source: io::Error,
    },
    /// Another process holds the data directory's lock.
    #[error("data directory {} is in use by another seshat process (its LOCK file is locked); stop that process or use another DATA_DIR", .dir.display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// An I/O operation failed.
    #[error("cannot {action} {}: {source}", .path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A file was written by a format version this build cannot read.
    #[error("{} has {kind} format version {found}, but this seshat reads version {supported}: run the seshat release that wrote it (or a newer one); to discard that file instead, move it out of the data directory and start again", .path.display())]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// `"snapshot"` or `"journal"`.
        kind: &'static str,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A file failed its checks.
    #[error("{} is corrupt: {reason}", .path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// No snapshot loads and the journals alone do not hold the whole history.
    #[error("refusing to start from {}: {detail}; restore snapshot.bin from a backup, or, to deliberately start empty and lose the data, move the directory aside", .dir.display())]
    NoValidState {
        /// The data directory.
        dir: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// A journal generation the replay needs is missing while later ones exist.
    #[error("refusing to start from {}: journal generation {missing} ({file}) is missing, so the later journals cannot be replayed in order; restore it from a backup, or move the later journal files aside to start from the events before the gap", .dir.display())]
    JournalGap {
        /// The data directory.
        dir: PathBuf,
        /// The missing generation.
        missing: u64,
        /// Its file name.
        file: String,
    },
    /// The journal refused writes after a failure it could not undo.
    #[error("the journal is unusable after an earlier write failure ({0}); restart seshat, which recovers the journal from disk")]
    Broken(String),
    /// A snapshot older than the newest one on disk was asked for.
    #[error("snapshot for generation {requested} is older than the newest snapshot (generation {newest}); rotate again and retry")]
    Stale {
        /// The rotation's generation.
        requested: u64,
        /// The newest snapshot's generation.
        newest: u64,
    },
    /// Serializing the state failed.
    #[error("cannot encode the snapshot: {0}")]
    Encode(String),
    /// [`verify`] found problems; the report lists them.
    #[error("{0}")]
    Problems(String),
}

/// What [`Store::open`] found on disk: the state to restore, then replay.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The loaded snapshot's state, `None` when starting from the journals alone.
    pub persisted: Option<Persisted>,
    /// Deliveries to apply after restoring `persisted`, in order.
    pub journal: Vec<Delivery>,
    /// Everything recovery repaired or fell back from (also logged).
    pub warnings: Vec<String>,
    /// The loaded snapshot's header.
    pub snapshot: Option<SnapshotHeader>,
}

/// What one snapshot write cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// File size in bytes.
    pub bytes: u64,
    /// Encode, write, fsync and renames.
    pub duration: Duration,
    /// Live tickets in it.
    pub tickets: usize,
    /// Journal generations below this are in the snapshot.
    pub generation: u64,
}

/// A snapshot file's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Format version.
    pub version: u32,
    /// The first journal generation *not* contained in the snapshot.
    pub generation: u64,
    /// When it was written.
    pub written_at: Micros,
    /// Payload length in bytes.
    pub payload_len: u64,
    /// CRC-32 of the payload.
    pub payload_crc: u32,
}

/// The newest snapshot on disk, for `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Its header.
    pub header: SnapshotHeader,
    /// File size in bytes.
    pub bytes: u64,
}

/// Proof that the journal was rotated; pass it to [`Store::write_snapshot`].
#[derive(Debug)]
#[must_use = "a rotation is only useful for writing the snapshot it was taken for"]
pub struct Rotation {
    generation: u64,
}

impl Rotation {
    /// The generation the snapshot will be cut at.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The data directory: the open journal and the snapshots (thread-safe).
pub struct Store {
    inner: Arc<Inner>,
    flusher: Option<JoinHandle<()>>,
}

struct Inner {
    dir: PathBuf,
    policy: SyncPolicy,
    journal: Mutex<Journal>,
    snapshots: Mutex<Snapshots>,
    stop: AtomicBool,
    _lock: File,
}

struct Journal {
    file: Arc<File>,
    generation: u64,
    /// Bytes in the active file.
    len: u64,
    /// Bytes of the active file known to be on disk.
    synced: u64,
    /// Records and bytes per generation still on disk.
    counts: BTreeMap<u64, (u64, u64)>,
    /// The newest snapshot's generation: a restart replays generations ≥ this.
    replay_from: u64,
    broken: Option<String>,
}

#[derive(Default)]
struct Snapshots {
    current: Option<SnapshotMeta>,
    prev: Option<SnapshotMeta>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn write_err(dir: &Path, action: &'static str, path: &Path, e: io::Error) -> StoreError {
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            StoreError::NotWritable {
                dir: dir.to_path_buf(),
                source: e,
            }
        }
        _ => StoreError::Io {
            action,
            path: path.to_path_buf(),
            source: e,
        },
    }
}

fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

fn journal_name(generation: u64) -> String {
    format!("journal-{generation:010}.log")
}

fn journal_generation(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("journal-")?.strip_suffix(".log")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Journal files by generation.
fn list_journals(dir: &Path) -> Result<BTreeMap<u64, PathBuf>, StoreError> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if let Some(g) = entry.file_name().to_str().and_then(journal_generation) {
            out.insert(g, entry.path());
        }
    }
    Ok(out)
}

/// The first free `<stem>.corrupt-<n><ext>` in `dir`.
fn aside_path(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    (1..)
        .map(|n| dir.join(format!("{stem}.corrupt-{n}{ext}")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.join(format!("{stem}.corrupt{ext}")))
}

/// The little-endian `u32` at `at`, 0 past the end.
fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The little-endian `u64` at `at`, 0 past the end.
fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Whether an unknown version field is really a damaged one: the header checksum
/// matches once the supported version is put back.
fn version_bit_rot(header: &[u8], crc_at: usize, supported: u32) -> bool {
    if header.len() < crc_at + 4 {
        return false;
    }
    let mut fixed = header[..crc_at].to_vec();
    fixed[8..12].copy_from_slice(&supported.to_le_bytes());
    crc32fast::hash(&fixed) == u32_at(header, crc_at)
}

// ------------------------------------------------------------------ snapshot format

fn encode_snapshot_header(h: &SnapshotHeader) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut b = [0u8; SNAPSHOT_HEADER_LEN];
    b[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    b[8..12].copy_from_slice(&h.version.to_le_bytes());
    b[16..24].copy_from_slice(&h.generation.to_le_bytes());
    b[24..32].copy_from_slice(&h.written_at.0.to_le_bytes());
    b[32..40].copy_from_slice(&h.payload_len.to_le_bytes());
    b[40..44].copy_from_slice(&h.payload_crc.to_le_bytes());
    let crc = crc32fast::hash(&b[..44]);
    b[44..48].copy_from_slice(&crc.to_le_bytes());
    b
}

fn parse_snapshot_header(path: &Path, b: &[u8]) -> Result<SnapshotHeader, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    if b.len() < 12 {
        return Err(corrupt(format!(
            "{} bytes, shorter than the snapshot header",
            b.len()
        )));
    }
    if b[0..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("not a seshat snapshot (bad magic)".into()));
    }
    let version = u32_at(b, 8);
    if version != SNAPSHOT_VERSION {
        if version_bit_rot(b, 44, SNAPSHOT_VERSION) {
            return Err(corrupt(format!("damaged version field ({version})")));
        }
        return Err(StoreError::UnknownVersion {
            path: path.to_path_buf(),
            kind: "snapshot",
            found: version,
            supported: SNAPSHOT_VERSION,
        });
    }
    if b.len() < SNAPSHOT_HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes, shorter than the snapshot header",
            b.len()
        )));
    }
    if crc32fast::hash(&b[..44]) != u32_at(b, 44) {
        return Err(corrupt("header checksum mismatch".into()));
    }
    Ok(SnapshotHeader {
        version,
        generation: u64_at(b, 16),
        written_at: Micros(u64_at(b, 24) as i64),
        payload_len: u64_at(b, 32),
        payload_crc: u32_at(b, 40),
    })
}

/// Checks and decodes a whole snapshot file's bytes.
fn decode_snapshot(path: &Path, b: &[u8]) -> Result<(SnapshotHeader, Persisted), StoreError> {
    let h = parse_snapshot_header(path, b)?;
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let payload = &b[SNAPSHOT_HEADER_LEN..];
    if payload.len() as u64 != h.payload_len {
        return Err(corrupt(format!(
            "payload is {} bytes, the header says {}",
            payload.len(),
            h.payload_len
        )));
    }
    if crc32fast::hash(payload) != h.payload_crc {
        return Err(corrupt("payload checksum mismatch".into()));
    }
    let (p, used): (Persisted, usize) =
        bincode::serde::decode_from_slice(payload, bincode::config::standard())
            .map_err(|e| corrupt(format!("payload does not decode: {e}")))?;
    if used != payload.len() {
        return Err(corrupt(format!(
            "{} trailing payload bytes",
            payload.len() - used
        )));
    }
    Ok((h, p))
}

/// Reads a snapshot; `Ok(None)` if the file does not exist.
fn read_snapshot(path: &Path) -> Result<Option<(SnapshotHeader, Persisted, u64)>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let (h, p) = decode_snapshot(path, &bytes)?;
    Ok(Some((h, p, bytes.len() as u64)))
}

/// Reads only a snapshot's header (for the fallback's generation).
fn peek_snapshot(path: &Path) -> Result<Option<SnapshotMeta>, StoreError> {
    use std::io::Read;
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let bytes = f.metadata().map_err(io_err("stat", path))?.len();
    let mut b = Vec::with_capacity(SNAPSHOT_HEADER_LEN);
    (&mut f)
        .take(SNAPSHOT_HEADER_LEN as u64)
        .read_to_end(&mut b)
        .map_err(io_err("read", path))?;
    let header = parse_snapshot_header(path, &b)?;
    if bytes != SNAPSHOT_HEADER_LEN as u64 + header.payload_len {
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "{bytes} bytes, the header says {}",
                SNAPSHOT_HEADER_LEN as u64 + header.payload_len
            ),
        });
    }
    Ok(Some(SnapshotMeta { header, bytes }))
}

// ------------------------------------------------------------------ journal format

fn journal_header(generation: u64) -> [u8; JOURNAL_HEADER_LEN] {
    let mut b = [0u8; JOURNAL_HEADER_LEN];
    b[0..8].copy_from_slice(&JOURNAL_MAGIC);
    b[8..12].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&b[..20]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    b
}

fn encode_record(payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&b[..8]);
    b.extend_from_slice(&crc.to_le_bytes());
    b.extend_from_slice(payload);
    b
}

/// How a journal file ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// After the last complete record.
    Clean,
    /// With an incomplete record starting at this offset.
    Torn(u64),
    /// With a damaged record (or header, at 0) at this offset, and data after it.
    Corrupt(u64, String),
}

struct Scan {
    records: Vec<Delivery>,
    /// Offset just after the last good record.
    good_len: u64,
    file_len: u64,
    end: End,
}

/// Reads a journal file's records up to the first bad one. Errors only for an
/// unknown format version.
fn scan_journal(path: &Path, b: &[u8], generation: u64) -> Result<Scan, StoreError> {
    let mut scan = Scan {
        records: Vec::new(),
        good_len: 0,
        file_len: b.len() as u64,
        end: End::Clean,
    };
    let bad = |reason: &str| End::Corrupt(0, reason.to_string());
    if b.len() < JOURNAL_HEADER_LEN || b[0..8] != JOURNAL_MAGIC {
        scan.end = bad(if b.len() < JOURNAL_HEADER_LEN {
            "shorter than the journal header"
        } else {
            "not a seshat journal (bad magic)"
        });
        return Ok(scan);
    }
    let version = u32_at(b, 8);
    if version != JOURNAL_VERSION && !version_bit_rot(b, 20, JOURNAL_VERSION) {
        return Err(StoreError::UnknownVersion {
            path: path.to_path_buf(),
            kind: "journal",
            found: version,
            supported: JOURNAL_VERSION,
        });
    }
    if version != JOURNAL_VERSION || crc32fast::hash(&b[..20]) != u32_at(b, 20) {
        scan.end = bad("header checksum mismatch");
        return Ok(scan);
    }
    let g = u64_at(b, 12);
    if g != generation {
        scan.end = End::Corrupt(
            0,
            format!("header says generation {g}, the file name says {generation}"),
        );
        return Ok(scan);
    }
    scan_records(b, &mut scan);
    Ok(scan)
}

/// Reads records from just after the journal header, stopping at the first bad one.
fn scan_records(b: &[u8], scan: &mut Scan) {
    let mut off = JOURNAL_HEADER_LEN;
    scan.good_len = off as u64;
    scan.end = End::Clean;
    let zeros = |from: usize| b[from..].iter().all(|x| *x == 0);
    loop {
        let rest = b.len() - off;
        if rest == 0 {
            break;
        }
        let torn_or = |reason: String| {
            if zeros(off) {
                End::Torn(off as u64)
            } else {
                End::Corrupt(off as u64, reason)
            }
        };
        if rest < RECORD_HEADER_LEN {
            scan.end = End::Torn(off as u64);
            break;
        }
        let h = &b[off..off + RECORD_HEADER_LEN];
        if crc32fast::hash(&h[..8]) != u32_at(h, 8) {
            scan.end = torn_or("record header checksum mismatch".into());
            break;
        }
        let len = u32_at(h, 0);
        if len > MAX_RECORD {
            scan.end = End::Corrupt(off as u64, format!("record length {len} is too large"));
            break;
        }
        let start = off + RECORD_HEADER_LEN;
        let end = start + len as usize;
        if end > b.len() {
            scan.end = End::Torn(off as u64);
            break;
        }
        let payload = &b[start..end];
        if crc32fast::hash(payload) != u32_at(h, 4) {
            scan.end = if zeros(end) {
                End::Torn(off as u64)
            } else {
                End::Corrupt(off as u64, "record checksum mismatch".into())
            };
            break;
        }
        match bincode::serde::decode_from_slice::<Delivery, _>(payload, bincode::config::standard())
        {
            Ok((d, used)) if used == payload.len() => scan.records.push(d),
            Ok(_) => {
                scan.end = End::Corrupt(off as u64, "record has trailing bytes".into());
                break;
            }
            Err(e) => {
                scan.end = End::Corrupt(off as u64, format!("record does not decode: {e}"));
                break;
            }
        }
        off = end;
        scan.good_len = off as u64;
    }
}

/// Creates journal `generation` atomically (temporary file, fsync, rename, fsync
/// the directory) and returns it open for appending.
fn create_journal(dir: &Path, generation: u64) -> Result<File, StoreError> {
    let tmp = dir.join(JOURNAL_TMP);
    let path = dir.join(journal_name(generation));
    let result = (|| {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&journal_header(generation))?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        Ok(f)
    })();
    match result {
        Ok(f) => {
            fsync_dir(dir)?;
            Ok(f)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(write_err(dir, "create journal", &path, e))
        }
    }
}

// ------------------------------------------------------------------ the store

/// A journal the recovery decided to replay, and what to do about its end.
struct Planned {
    generation: u64,
    path: PathBuf,
    scan: Scan,
}

impl Store {
    /// Opens (creating if missing) the data directory, recovers its state and
    /// opens the journal for appending.
    pub fn open(dir: &Path, policy: SyncPolicy) -> Result<(Store, Recovered), StoreError> {
        fs::create_dir_all(dir).map_err(|e| write_err(dir, "create data directory", dir, e))?;
        let probe = dir.join(PROBE_TMP);
        File::create(&probe)
            .and_then(|f| f.sync_all())
            .map_err(|e| write_err(dir, "write to", dir, e))?;
        let _ = fs::remove_file(&probe);
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| write_err(dir, "open", &lock_path, e))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked {
                    dir: dir.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        for tmp in [SNAPSHOT_TMP, JOURNAL_TMP] {
            let _ = fs::remove_file(dir.join(tmp));
        }

        let mut rec = Recovered::default();
        fn warn(rec: &mut Recovered, msg: String) {
            tracing::warn!("{msg}");
            rec.warnings.push(msg);
        }

        // Phase 1: decide, reading only.
        let cur_path = dir.join(SNAPSHOT_FILE);
        let prev_path = dir.join(PREV_SNAPSHOT_FILE);
        let mut aside_snapshots: Vec<(PathBuf, &str)> = Vec::new();
        let mut snaps = Snapshots::default();
        let mut cur_problem: Option<String> = None;
        match read_snapshot(&cur_path) {
            Ok(Some((h, p, bytes))) => {
                rec.persisted = Some(p);
                rec.snapshot = Some(h);
                snaps.current = Some(SnapshotMeta { header: h, bytes });
                match peek_snapshot(&prev_path) {
                    Ok(m) => snaps.prev = m,
                    Err(e) => warn(
                        &mut rec,
                        format!("the fallback snapshot is unusable ({e}); the next snapshot replaces it"),
                    ),
                }
            }
            Ok(None) => {}
            Err(StoreError::Corrupt { reason, .. }) => {
                tracing::error!(
                    "{} is corrupt ({reason}); falling back to {PREV_SNAPSHOT_FILE}",
                    cur_path.display()
                );
                cur_problem = Some(reason);
                aside_snapshots.push((cur_path.clone(), "snapshot"));
            }
            Err(e) => return Err(e),
        }
        let cur_present = cur_problem.is_some() || snaps.current.is_some();
        let mut prev_problem: Option<String> = None;
        let mut prev_present = false;
        if snaps.current.is_none() {
            match read_snapshot(&prev_path) {
                Ok(Some((h, p, bytes))) => {
                    prev_present = true;
                    rec.persisted = Some(p);
                    rec.snapshot = Some(h);
                    snaps.prev = Some(SnapshotMeta { header: h, bytes });
                }
                Ok(None) => {}
                Err(StoreError::Corrupt { reason, .. }) => {
                    prev_present = true;
                    tracing::error!("{} is corrupt ({reason})", prev_path.display());
                    prev_problem = Some(reason);
                    aside_snapshots.push((prev_path.clone(), "snapshot.prev"));
                }
                Err(e) => return Err(e),
            }
        }

        let journals = list_journals(dir)?;
        let base = rec.snapshot.map_or(1, |h| h.generation);
        if rec.snapshot.is_none() {
            // Without a snapshot only a journal reaching back to generation 1
            // holds the whole history.
            let first = journals.keys().next().copied();
            if first.is_some_and(|f| f != 1) || (first.is_none() && (cur_present || prev_present)) {
                let mut detail = String::new();
                if let Some(r) = &cur_problem {
                    let _ = write!(detail, "{SNAPSHOT_FILE} is corrupt ({r}); ");
                } else {
                    let _ = write!(detail, "{SNAPSHOT_FILE} is missing; ");
                }
                if let Some(r) = &prev_problem {
                    let _ = write!(detail, "{PREV_SNAPSHOT_FILE} is corrupt ({r}); ");
                } else {
                    let _ = write!(detail, "{PREV_SNAPSHOT_FILE} is missing; ");
                }
                match first {
                    Some(f) => {
                        let _ = write!(
                            detail,
                            "the journals start at generation {f}, not 1, so they cannot rebuild the state"
                        );
                    }
                    None => detail.push_str("there is no journal to rebuild the state from"),
                }
                return Err(StoreError::NoValidState {
                    dir: dir.to_path_buf(),
                    detail,
                });
            }
        }
        let needed: Vec<(u64, PathBuf)> = journals
            .range(base..)
            .map(|(g, p)| (*g, p.clone()))
            .collect();
        for (i, (g, _)) in needed.iter().enumerate() {
            let expected = base + i as u64;
            if *g != expected {
                return Err(StoreError::JournalGap {
                    dir: dir.to_path_buf(),
                    missing: expected,
                    file: journal_name(expected),
                });
            }
        }
        let mut planned: Vec<Planned> = Vec::new();
        for (generation, path) in needed {
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            let scan = scan_journal(&path, &bytes, generation)?;
            let stop = matches!(scan.end, End::Corrupt(..));
            planned.push(Planned {
                generation,
                path,
                scan,
            });
            if stop {
                break;
            }
        }
        let later: Vec<u64> = journals
            .range(planned.last().map_or(base, |p| p.generation + 1)..)
            .map(|(g, _)| *g)
            .filter(|g| *g >= base)
            .collect();

        // Phase 2: repair, then report.
        for (path, stem) in aside_snapshots {
            let aside = aside_path(dir, stem, ".bin");
            fs::rename(&path, &aside).map_err(|e| write_err(dir, "move aside", &path, e))?;
            let msg = if stem == "snapshot" {
                match &rec.snapshot {
                    Some(h) => format!(
                        "{SNAPSHOT_FILE} is corrupt ({}); loaded the previous snapshot {PREV_SNAPSHOT_FILE} (generation {}) and replayed the journals after it; the corrupt file is kept as {}",
                        cur_problem.as_deref().unwrap_or(""),
                        h.generation,
                        aside.display()
                    ),
                    None => format!(
                        "{SNAPSHOT_FILE} is corrupt ({}); kept as {}",
                        cur_problem.as_deref().unwrap_or(""),
                        aside.display()
                    ),
                }
            } else {
                format!(
                    "{PREV_SNAPSHOT_FILE} is corrupt ({}); kept as {}",
                    prev_problem.as_deref().unwrap_or(""),
                    aside.display()
                )
            };
            tracing::error!("{msg}");
            rec.warnings.push(msg);
        }
        if !cur_present && prev_present && rec.snapshot.is_some() {
            warn(
                &mut rec,
                format!("{SNAPSHOT_FILE} is missing (a crash during a snapshot leaves it so); loaded {PREV_SNAPSHOT_FILE} and replayed the journals after it"),
            );
        }
        if rec.snapshot.is_none() && (cur_present || prev_present) {
            warn(
                &mut rec,
                format!(
                    "no snapshot could be loaded; rebuilt the state from the complete journal ({} generations)",
                    planned.len()
                ),
            );
        }
        let mut counts = BTreeMap::new();
        for plan in &mut planned {
            let name = journal_name(plan.generation);
            let n = plan.scan.records.len() as u64;
            match plan.scan.end.clone() {
                End::Clean => {}
                End::Torn(off) => {
                    truncate(&plan.path, off)?;
                    warn(
                        &mut rec,
                        format!(
                            "{name}: torn or damaged last record ({} bytes at offset {off}) truncated; most likely it was being written when the process stopped, so it was never acknowledged",
                            plan.scan.file_len - off
                        ),
                    );
                }
                End::Corrupt(off, reason) => {
                    let aside = aside_path(dir, &format!("journal-{:010}", plan.generation), "");
                    if off == 0 {
                        fs::rename(&plan.path, &aside)
                            .map_err(|e| write_err(dir, "move aside", &plan.path, e))?;
                    } else {
                        fs::copy(&plan.path, &aside)
                            .map_err(|e| write_err(dir, "copy aside", &plan.path, e))?;
                        truncate(&plan.path, off)?;
                    }
                    let mut msg = format!(
                        "{name}: corrupt data at offset {off} ({reason}); replayed the {n} records before it and STOPPED there: its last {} bytes were not replayed; the whole file is kept as {}",
                        plan.scan.file_len - off,
                        aside.display()
                    );
                    for g in &later {
                        let p = dir.join(journal_name(*g));
                        let a = aside_path(dir, &format!("journal-{g:010}"), "");
                        fs::rename(&p, &a).map_err(|e| write_err(dir, "move aside", &p, e))?;
                        let _ = write!(
                            msg,
                            "; the later {} was not replayed and is kept as {}",
                            journal_name(*g),
                            a.display()
                        );
                    }
                    msg.push_str("; events in those files are missing from the state (inspect them with `seshat snapshot inspect`)");
                    tracing::error!("{msg}");
                    rec.warnings.push(msg);
                }
            }
            if !matches!(plan.scan.end, End::Corrupt(0, _)) {
                let len = match plan.scan.end {
                    End::Clean => plan.scan.file_len,
                    _ => plan.scan.good_len,
                };
                counts.insert(plan.generation, (n, len));
            }
            rec.journal.append(&mut plan.scan.records);
        }
        fsync_dir(dir)?;

        let (file, generation, len) = match counts.last_key_value() {
            Some((&g, &(_, len))) => {
                let path = dir.join(journal_name(g));
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| write_err(dir, "open", &path, e))?;
                f.seek(SeekFrom::Start(len))
                    .map_err(io_err("seek", &path))?;
                (f, g, len)
            }
            None => {
                if rec.snapshot.is_some() && planned.is_empty() {
                    warn(
                        &mut rec,
                        format!(
                            "{} (the journal after the snapshot) was missing; created it empty",
                            journal_name(base)
                        ),
                    );
                }
                let f = create_journal(dir, base)?;
                counts.insert(base, (0, JOURNAL_HEADER_LEN as u64));
                (f, base, JOURNAL_HEADER_LEN as u64)
            }
        };
        if !rec.journal.is_empty() || rec.snapshot.is_some() {
            tracing::info!(
                snapshot_generation = rec.snapshot.map(|h| h.generation),
                journal_records = rec.journal.len(),
                "recovered {}",
                dir.display()
            );
        }
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            policy,
            journal: Mutex::new(Journal {
                file: Arc::new(file),
                generation,
                len,
                synced: len,
                counts,
                replay_from: base,
                broken: None,
            }),
            snapshots: Mutex::new(snaps),
            stop: AtomicBool::new(false),
            _lock: lock_file,
        });
        let flusher = match policy {
            SyncPolicy::EveryRecord => None,
            SyncPolicy::GroupCommit(every) => {
                let every = every.max(Duration::from_millis(1));
                let inner = Arc::clone(&inner);
                Some(
                    std::thread::Builder::new()
                        .name("seshat-journal-flush".into())
                        .spawn(move || {
                            while !inner.stop.load(Ordering::Acquire) {
                                std::thread::park_timeout(every);
                                inner.flush();
                            }
                        })
                        .map_err(io_err("start the journal flusher for", dir))?,
                )
            }
        };
        Ok((Store { inner, flusher }, rec))
    }

    /// Appends one delivery to the journal; durable on return under
    /// [`SyncPolicy::EveryRecord`]. An error means it is not journaled: do not acknowledge.
    pub fn append(&self, d: &Delivery) -> io::Result<()> {
        let payload = bincode::serde::encode_to_vec(d, bincode::config::standard())
            .map_err(io::Error::other)?;
        if payload.len() > MAX_RECORD as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "delivery of {} bytes exceeds the journal record limit",
                    payload.len()
                ),
            ));
        }
        let record = encode_record(&payload);
        let mut j = lock(&self.inner.journal);
        if let Some(why) = &j.broken {
            return Err(io::Error::other(StoreError::Broken(why.clone())));
        }
        let start = j.len;
        if let Err(e) = (&*j.file).write_all(&record) {
            j.rollback(start, &e);
            return Err(e);
        }
        if self.inner.policy == SyncPolicy::EveryRecord {
            if let Err(e) = j.file.sync_data() {
                j.rollback(start, &e);
                return Err(e);
            }
            j.synced = start + record.len() as u64;
        }
        j.len = start + record.len() as u64;
        let (generation, len) = (j.generation, j.len);
        let c = j.counts.entry(generation).or_default();
        c.0 += 1;
        c.1 = len;
        Ok(())
    }

    /// Flushes the journal to disk now (useful under group commit before a shutdown).
    pub fn sync(&self) -> io::Result<()> {
        self.inner.flush();
        match &lock(&self.inner.journal).broken {
            Some(why) => Err(io::Error::other(StoreError::Broken(why.clone()))),
            None => Ok(()),
        }
    }

    /// Starts a new journal generation; call it together with
    /// [`Engine::persisted`](crate::engine::Engine::persisted), under the lock
    /// that serializes ingest, so the state holds exactly the older generations.
    pub fn rotate(&self) -> Result<Rotation, StoreError> {
        let mut j = lock(&self.inner.journal);
        if let Some(why) = &j.broken {
            return Err(StoreError::Broken(why.clone()));
        }
        if j.synced < j.len {
            if let Err(e) = j.file.sync_data() {
                let why = format!("fsync of {} failed: {e}", journal_name(j.generation));
                tracing::error!("{why}");
                j.broken = Some(why.clone());
                return Err(StoreError::Broken(why));
            }
            j.synced = j.len;
        }
        let next = j.generation + 1;
        let file = create_journal(&self.inner.dir, next)?;
        let len = JOURNAL_HEADER_LEN as u64;
        j.file = Arc::new(file);
        j.generation = next;
        j.len = len;
        j.synced = len;
        j.counts.insert(next, (0, len));
        Ok(Rotation { generation: next })
    }

    /// Writes the state captured with `rotation` as the newest snapshot
    /// (atomically), keeps the old one as the fallback and deletes the journals
    /// neither needs. Safe to run outside the ingest lock.
    pub fn write_snapshot(
        &self,
        rotation: Rotation,
        p: &Persisted,
    ) -> Result<SnapshotInfo, StoreError> {
        let started = Instant::now();
        let dir = &self.inner.dir;
        let mut snaps = lock(&self.inner.snapshots);
        let newest = snaps
            .current
            .or(snaps.prev)
            .map_or(0, |m| m.header.generation);
        if rotation.generation <= newest {
            return Err(StoreError::Stale {
                requested: rotation.generation,
                newest,
            });
        }
        let tmp = dir.join(SNAPSHOT_TMP);
        let cur = dir.join(SNAPSHOT_FILE);
        let prev = dir.join(PREV_SNAPSHOT_FILE);
        let header = match write_snapshot_file(&tmp, rotation.generation, p) {
            Ok(h) => h,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(match e {
                    bincode::error::EncodeError::Io { inner, .. } => {
                        write_err(dir, "write snapshot", &tmp, inner)
                    }
                    other => StoreError::Encode(other.to_string()),
                });
            }
        };
        if snaps.current.is_some() {
            if let Err(e) = fs::rename(&cur, &prev) {
                let _ = fs::remove_file(&tmp);
                return Err(write_err(dir, "rename", &cur, e));
            }
            snaps.prev = snaps.current.take();
            fsync_dir(dir)?;
        }
        fs::rename(&tmp, &cur).map_err(|e| write_err(dir, "rename", &tmp, e))?;
        fsync_dir(dir)?;
        let bytes = SNAPSHOT_HEADER_LEN as u64 + header.payload_len;
        snaps.current = Some(SnapshotMeta { header, bytes });
        // The fallback needs its journals; without one, the fallback is the
        // empty state, which needs them all.
        let keep_from = snaps
            .prev
            .map_or(1, |m| m.header.generation.min(header.generation));
        drop(snaps);
        {
            let mut j = lock(&self.inner.journal);
            j.replay_from = header.generation;
            j.counts.retain(|g, _| *g >= keep_from);
        }
        self.delete_journals_before(keep_from);
        let info = SnapshotInfo {
            bytes,
            duration: started.elapsed(),
            tickets: p.tickets.iter().flatten().count(),
            generation: header.generation,
        };
        tracing::info!(
            bytes = info.bytes,
            ms = info.duration.as_secs_f64() * 1e3,
            tickets = info.tickets,
            generation = info.generation,
            "snapshot written"
        );
        Ok(info)
    }

    /// Rotates and writes a snapshot of `p` in one call; `p` must hold every
    /// delivery appended so far, so call it under the lock that serializes ingest.
    pub fn snapshot(&self, p: &Persisted) -> Result<SnapshotInfo, StoreError> {
        let rotation = self.rotate()?;
        self.write_snapshot(rotation, p)
    }

    fn delete_journals_before(&self, keep_from: u64) {
        let dir = &self.inner.dir;
        let Ok(journals) = list_journals(dir) else {
            return;
        };
        for (_, path) in journals.range(..keep_from) {
            if let Err(e) = fs::remove_file(path) {
                tracing::warn!("cannot delete the old journal {}: {e}", path.display());
            }
        }
        let _ = fsync_dir(dir);
    }

    /// Records a restart would replay (those after the newest snapshot).
    pub fn journal_len(&self) -> u64 {
        let j = lock(&self.inner.journal);
        j.counts.range(j.replay_from..).map(|(_, c)| c.0).sum()
    }

    /// Bytes of the journal files a restart would replay.
    pub fn journal_bytes(&self) -> u64 {
        let j = lock(&self.inner.journal);
        j.counts.range(j.replay_from..).map(|(_, c)| c.1).sum()
    }

    /// The newest snapshot on disk, if any.
    pub fn last_snapshot(&self) -> Option<SnapshotMeta> {
        let s = lock(&self.inner.snapshots);
        s.current.or(s.prev)
    }

    /// Why the journal refuses writes, if it does (for `/health`); a restart recovers.
    pub fn failure(&self) -> Option<String> {
        lock(&self.inner.journal).broken.clone()
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The durability policy in force.
    pub fn policy(&self) -> SyncPolicy {
        self.inner.policy
    }
}

/// Passes writes through, counting and checksumming them.
struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Streams a snapshot into `path` (placeholder header, payload, then the real
/// header) and fsyncs it, without holding the encoded payload in memory.
fn write_snapshot_file(
    path: &Path,
    generation: u64,
    p: &Persisted,
) -> Result<SnapshotHeader, bincode::error::EncodeError> {
    let io = |inner| bincode::error::EncodeError::Io { inner, index: 0 };
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io)?;
    f.write_all(&[0u8; SNAPSHOT_HEADER_LEN]).map_err(io)?;
    let mut w = CrcWriter {
        inner: io::BufWriter::with_capacity(1 << 20, f),
        crc: crc32fast::Hasher::new(),
        len: 0,
    };
    bincode::serde::encode_into_std_write(p, &mut w, bincode::config::standard())?;
    let mut f = w.inner.into_inner().map_err(|e| io(e.into_error()))?;
    let header = SnapshotHeader {
        version: SNAPSHOT_VERSION,
        generation,
        written_at: Micros::now(),
        payload_len: w.len,
        payload_crc: w.crc.finalize(),
    };
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.write_all(&encode_snapshot_header(&header)).map_err(io)?;
    f.sync_all().map_err(io)?;
    Ok(header)
}

impl Drop for Store {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(t) = self.flusher.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.inner.flush();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Flushes what was written but not yet synced, without blocking appends
    /// during the `fdatasync`.
    fn flush(&self) {
        let (file, generation, target) = {
            let j = lock(&self.journal);
            if j.broken.is_some() || j.synced >= j.len {
                return;
            }
            (Arc::clone(&j.file), j.generation, j.len)
        };
        let result = file.sync_data();
        let mut j = lock(&self.journal);
        if j.generation != generation {
            // Rotated meanwhile; the rotation synced the old file itself.
            return;
        }
        match result {
            Ok(()) => j.synced = j.synced.max(target),
            Err(e) => {
                let why = format!("fsync of {} failed: {e}", journal_name(generation));
                tracing::error!("{why}; refusing further appends");
                j.broken = Some(why);
            }
        }
    }
}

impl Journal {
    /// Undoes a partial append; if that fails the journal refuses further writes.
    fn rollback(&mut self, start: u64, cause: &io::Error) {
        let undone = self
            .file
            .set_len(start)
            .and_then(|()| (&*self.file).seek(SeekFrom::Start(start)).map(|_| ()))
            .and_then(|()| {
                if self.synced >= start {
                    self.file.sync_data()
                } else {
                    Ok(())
                }
            });
        match undone {
            Ok(()) => {
                tracing::error!(
                    "journal append failed ({cause}); the partial record was removed and the delivery not acknowledged"
                );
            }
            Err(e) => {
                let why = format!(
                    "append to {} failed ({cause}) and could not be undone ({e})",
                    journal_name(self.generation)
                );
                tracing::error!("{why}; refusing further appends");
                self.broken = Some(why);
            }
        }
    }
}

fn truncate(path: &Path, len: u64) -> Result<(), StoreError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    f.set_len(len).map_err(io_err("truncate", path))?;
    f.sync_all().map_err(io_err("fsync", path))
}

// ------------------------------------------------------------------ tools

/// A human-readable description of a snapshot or journal file: header, counts,
/// time range.
pub fn inspect(path: &Path) -> Result<String, StoreError> {
    let bytes = fs::read(path).map_err(io_err("read", path))?;
    if bytes.starts_with(&JOURNAL_MAGIC) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let generation = journal_generation(name).unwrap_or(u64_at(&bytes, 12));
        let mut scan = scan_journal(path, &bytes, generation)?;
        let mut out = String::new();
        if let End::Corrupt(0, why) = &scan.end {
            if bytes.len() >= JOURNAL_HEADER_LEN {
                // For forensics: read the records anyway, each has its own checksums.
                let _ = writeln!(out, "header:      DAMAGED ({why}); records read regardless");
                scan_records(&bytes, &mut scan);
            }
        }
        return Ok(describe_journal(path, &bytes, generation, &scan) + &out);
    }
    let (h, p) = decode_snapshot(path, &bytes)?;
    Ok(describe_snapshot(path, bytes.len() as u64, &h, &p))
}

fn describe_snapshot(path: &Path, bytes: u64, h: &SnapshotHeader, p: &Persisted) -> String {
    let mut s = String::new();
    let live: Vec<_> = p.tickets.iter().flatten().collect();
    let mut by_status = [0usize; 3];
    for t in &live {
        by_status[t.status.index()] += 1;
    }
    let first = live.iter().map(|t| t.created_at).min();
    let last = live.iter().map(|t| t.created_at).max();
    let _ = writeln!(s, "file:             {} ({bytes} bytes)", path.display());
    let _ = writeln!(
        s,
        "kind:             snapshot, format version {}",
        h.version
    );
    let _ = writeln!(
        s,
        "generation:       {} (contains journal generations < {})",
        h.generation, h.generation
    );
    let _ = writeln!(s, "written at:       {}", h.written_at);
    let _ = writeln!(
        s,
        "payload:          {} bytes, crc32 {:08x} (verified)",
        h.payload_len, h.payload_crc
    );
    let _ = writeln!(
        s,
        "tickets:          {} live ({} open, {} in_progress, {} closed), {} deleted, next id {}",
        live.len(),
        by_status[Status::Open.index()],
        by_status[Status::InProgress.index()],
        by_status[Status::Closed.index()],
        p.tickets.len() - live.len(),
        p.tickets.len() + 1
    );
    let _ = writeln!(s, "users:            {}", p.users.len());
    let mut helpers = p
        .helpers
        .iter()
        .take(10)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if p.helpers.len() > 10 {
        helpers.push_str(", …");
    }
    let _ = writeln!(s, "helpers:          {} ({helpers})", p.helpers.len());
    let _ = writeln!(
        s,
        "bot user:         {}",
        p.bot_user.as_deref().unwrap_or("-")
    );
    let _ = writeln!(s, "seen event ids:   {}", p.seen.len());
    let _ = writeln!(s, "deleted messages: {}", p.deleted.len());
    let _ = writeln!(
        s,
        "clock:            {}",
        p.clock.map_or("-".into(), |c| c.to_iso())
    );
    match (first, last) {
        (Some(a), Some(b)) => {
            let _ = writeln!(s, "created_at:       {a} .. {b}");
        }
        _ => {
            let _ = writeln!(s, "created_at:       -");
        }
    }
    s
}

fn describe_end(scan: &Scan) -> String {
    match &scan.end {
        End::Clean => "clean".into(),
        End::Torn(off) => format!(
            "torn last record at offset {off} ({} bytes; truncated at start-up)",
            scan.file_len - off
        ),
        End::Corrupt(off, why) => format!(
            "CORRUPT at offset {off}: {why} ({} bytes from there are unreadable)",
            scan.file_len - off
        ),
    }
}

fn describe_journal(path: &Path, bytes: &[u8], generation: u64, scan: &Scan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "file:        {} ({} bytes)", path.display(), bytes.len());
    let _ = writeln!(
        s,
        "kind:        journal, format version {}, generation {generation}",
        u32_at(bytes, 8)
    );
    let _ = writeln!(s, "records:     {}", scan.records.len());
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &scan.records {
        *kinds.entry(d.event.kind()).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(
        s,
        "events:      {}",
        if kinds.is_empty() {
            "-".into()
        } else {
            kinds.join(", ")
        }
    );
    let first = scan.records.iter().map(|d| d.time).min();
    let last = scan.records.iter().map(|d| d.time).max();
    match (first, last) {
        (Some(a), Some(b)) => {
            let _ = writeln!(s, "time range:  {a} .. {b}");
        }
        _ => {
            let _ = writeln!(s, "time range:  -");
        }
    }
    let _ = writeln!(s, "end:         {}", describe_end(scan));
    s
}

/// Checks every snapshot and journal in a data directory without changing
/// anything: `Ok(report)` if start-up would lose nothing, else
/// [`StoreError::Problems`] with the report.
pub fn verify(dir: &Path) -> Result<String, StoreError> {
    let mut s = String::new();
    let mut problems = 0usize;
    let entries = fs::read_dir(dir).map_err(io_err("read", dir))?;
    let mut others: Vec<String> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(".corrupt") || name.ends_with(".tmp") {
            others.push(name);
        }
    }
    let _ = writeln!(s, "data directory {}", dir.display());
    let mut loaded: [Option<SnapshotHeader>; 2] = [None, None];
    let mut present = [false; 2];
    // Why start-up would refuse (an unknown format version where it must read,
    // no loadable state, a gap), for the last line.
    let mut refuse: Option<String> = None;
    for (i, name) in [SNAPSHOT_FILE, PREV_SNAPSHOT_FILE].into_iter().enumerate() {
        let path = dir.join(name);
        match read_snapshot(&path) {
            Ok(None) => {
                let _ = writeln!(s, "{name}: absent");
            }
            Ok(Some((h, p, bytes))) => {
                present[i] = true;
                loaded[i] = Some(h);
                let _ = writeln!(
                    s,
                    "{name}: ok, generation {}, {} tickets, {} users, {bytes} bytes, written {}",
                    h.generation,
                    p.tickets.iter().flatten().count(),
                    p.users.len(),
                    h.written_at
                );
            }
            Err(e) => {
                present[i] = true;
                problems += 1;
                // Start-up reads snapshot.bin, and snapshot.prev.bin only without it.
                if matches!(e, StoreError::UnknownVersion { .. })
                    && (i == 0 || loaded[0].is_none())
                    && refuse.is_none()
                {
                    refuse = Some(format!("{name} has an unknown format version"));
                }
                let _ = writeln!(s, "{name}: PROBLEM: {e}");
            }
        }
    }
    let journals = list_journals(dir)?;
    let base = loaded[0].or(loaded[1]).map(|h| h.generation);
    if loaded[0].is_none() && loaded[1].is_some() && refuse.is_none() {
        let _ = writeln!(s, "note: start-up would fall back to {PREV_SNAPSHOT_FILE}");
    }
    if base.is_none() && (present[0] || present[1]) && journals.keys().next() != Some(&1) {
        problems += 1;
        let _ = writeln!(
            s,
            "PROBLEM: no snapshot loads and the journals do not start at generation 1: start-up would refuse"
        );
        refuse.get_or_insert_with(|| {
            "no snapshot loads and the journals do not start at generation 1".into()
        });
    }
    if base.is_none() && !present[0] && !present[1] {
        if let Some(&first) = journals.keys().next() {
            if first != 1 {
                problems += 1;
                let _ = writeln!(
                    s,
                    "PROBLEM: no snapshot and the journals start at generation {first}, not 1: start-up would refuse"
                );
                refuse.get_or_insert_with(|| {
                    format!("no snapshot and the journals start at generation {first}")
                });
            }
        }
    }
    let base = base.unwrap_or(1);
    let mut expected = base;
    let mut replay = 0usize;
    let mut stopped = false;
    for (g, path) in &journals {
        let name = journal_name(*g);
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) => {
                problems += 1;
                let _ = writeln!(s, "{name}: PROBLEM: cannot read: {e}");
                continue;
            }
        };
        let scan = match scan_journal(path, &bytes, *g) {
            Ok(scan) => scan,
            Err(e) => {
                problems += 1;
                if *g >= base {
                    if !stopped && refuse.is_none() {
                        refuse = Some(format!("{name} has an unknown format version"));
                    }
                    expected = *g + 1;
                }
                let _ = writeln!(s, "{name}: PROBLEM: {e}");
                continue;
            }
        };
        let role = if *g < base {
            "in the snapshot, kept for the fallback"
        } else {
            "replayed at start-up"
        };
        let corrupt = matches!(scan.end, End::Corrupt(..));
        let _ = writeln!(
            s,
            "{name}: {} records, {} bytes, {} ({role})",
            scan.records.len(),
            bytes.len(),
            if corrupt {
                "PROBLEM: ".to_string() + &describe_end(&scan)
            } else {
                describe_end(&scan)
            }
        );
        if *g >= base {
            if *g != expected && !stopped {
                problems += 1;
                let _ = writeln!(
                    s,
                    "PROBLEM: generation {expected} is missing before {name}: start-up would refuse"
                );
                refuse.get_or_insert_with(|| format!("journal generation {expected} is missing"));
            }
            expected = *g + 1;
            if !stopped {
                replay += scan.records.len();
            }
            if corrupt {
                problems += 1;
                stopped = true;
            }
        } else if corrupt {
            problems += 1;
        }
    }
    for o in others {
        let _ = writeln!(
            s,
            "note: {o} (left by an interrupted write or by recovery; not read)"
        );
    }
    if let Some(why) = &refuse {
        let _ = writeln!(s, "start-up would REFUSE to start: {why}");
    } else {
        let _ = writeln!(
            s,
            "start-up would load {} and replay {replay} journal records from generation {base}",
            match (loaded[0], loaded[1]) {
                (Some(_), _) => SNAPSHOT_FILE,
                (None, Some(_)) => PREV_SNAPSHOT_FILE,
                _ => "no snapshot",
            }
        );
    }
    if problems == 0 {
        let _ = writeln!(s, "ok: no problems found");
        Ok(s)
    } else {
        let _ = writeln!(s, "{problems} problem(s) found");
        Err(StoreError::Problems(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Engine;
    use crate::model::{Config, Event, Message};

    const T0: i64 = 1_767_225_600_000_000;
    const SEC: i64 = 1_000_000;

    fn cfg() -> Config {
        Config {
            help_channels: vec!["C1".into()],
            helpers: vec!["UH1".into(), "UH2".into()],
            ..Config::default()
        }
    }

    fn slack_ts(at: i64) -> String {
        format!("{}.{:06}", at / SEC, at % SEC)
    }

    fn message(id: String, at: i64, thread: Option<i64>, user: &str, text: String) -> Delivery {
        Delivery {
            event_id: Some(id),
            time: Micros(at),
            bot_user: None,
            event: Event::Message(Message {
                channel: "C1".into(),
                ts: slack_ts(at),
                at: Micros(at),
                thread_ts: thread.map(slack_ts),
                user: Some(user.into()),
                bot: false,
                subtype: None,
                text,
            }),
        }
    }

    /// Ticket `k`'s deliveries: the question, a helper reply for two thirds,
    /// a resolving reaction for half.
    fn ticket(k: u64) -> Vec<Delivery> {
        let at = T0 + k as i64 * 30 * SEC;
        let user = format!("U{:05}", k % 5000);
        let mut out = vec![message(
            format!("Ev{k}q"),
            at,
            None,
            &user,
            format!(
                "Help #{k}: my project fails to build after updating.\nI tried reinstalling the dependencies and clearing the cache but it still says error E{}. Any ideas?",
                k % 97
            ),
        )];
        let helper = if k.is_multiple_of(2) { "UH1" } else { "UH2" };
        if !k.is_multiple_of(3) {
            out.push(message(
                format!("Ev{k}r"),
                at + 60 * SEC,
                Some(at),
                helper,
                "Have you tried deleting the lock file?".into(),
            ));
        }
        if k.is_multiple_of(2) {
            out.push(Delivery {
                event_id: Some(format!("Ev{k}c")),
                time: Micros(at + 120 * SEC),
                bot_user: None,
                event: Event::Reaction {
                    added: true,
                    user: helper.into(),
                    reaction: "white_check_mark".into(),
                    channel: "C1".into(),
                    item_ts: slack_ts(at),
                    at: Micros(at + 120 * SEC),
                },
            });
        }
        out
    }

    fn stream(tickets: u64) -> Vec<Delivery> {
        (1..=tickets).flat_map(ticket).collect()
    }

    fn encoded(p: &Persisted) -> Vec<u8> {
        bincode::serde::encode_to_vec(p, bincode::config::standard()).unwrap()
    }

    fn rebuild(rec: Recovered) -> Engine {
        let mut e = match rec.persisted {
            Some(p) => Engine::restore(cfg(), p).expect("same channels"),
            None => Engine::new(cfg()),
        };
        for d in &rec.journal {
            e.apply(d);
        }
        e
    }

    fn full(ds: &[Delivery]) -> Vec<u8> {
        let mut e = Engine::new(cfg());
        for d in ds {
            e.apply(d);
        }
        encoded(&e.persisted())
    }

    fn open(dir: &Path) -> (Store, Recovered) {
        Store::open(dir, SyncPolicy::EveryRecord).expect("open")
    }

    /// Appends `ds` to the store and the engine.
    fn feed(store: &Store, e: &mut Engine, ds: &[Delivery]) {
        for d in ds {
            store.append(d).unwrap();
            e.apply(d);
        }
    }

    fn jpath(dir: &Path, g: u64) -> PathBuf {
        dir.join(journal_name(g))
    }

    fn flip(path: &Path, at: u64) {
        let mut b = fs::read(path).unwrap();
        b[at as usize] ^= 0x10;
        fs::write(path, b).unwrap();
    }

    /// Offsets of every record in a journal file.
    fn record_offsets(path: &Path) -> Vec<u64> {
        let b = fs::read(path).unwrap();
        let mut off = JOURNAL_HEADER_LEN;
        let mut out = Vec::new();
        while off < b.len() {
            out.push(off as u64);
            off += RECORD_HEADER_LEN + u32_at(&b, off) as usize;
        }
        out
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn empty_dir_starts_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (store, rec) = open(&dir);
        assert!(rec.persisted.is_none() && rec.journal.is_empty() && rec.warnings.is_empty());
        assert_eq!(store.journal_len(), 0);
        assert!(store.last_snapshot().is_none());
        assert_eq!(names(&dir), ["LOCK", "journal-0000000001.log"]);
        drop(store);
        let (_, rec) = open(&dir);
        assert!(rec.persisted.is_none() && rec.journal.is_empty() && rec.warnings.is_empty());
    }

    #[test]
    fn round_trip_snapshot_and_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = stream(40);
        let (store, _) = open(tmp.path());
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..50]);
        let info = store.snapshot(&e.persisted()).unwrap();
        assert_eq!(info.tickets, e.all_tickets().count());
        assert_eq!(info.generation, 2);
        assert_eq!(
            info.bytes,
            fs::metadata(tmp.path().join(SNAPSHOT_FILE)).unwrap().len()
        );
        feed(&store, &mut e, &ds[50..]);
        assert_eq!(store.journal_len(), (ds.len() - 50) as u64);
        drop(store);

        let (store, rec) = open(tmp.path());
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        assert_eq!(rec.snapshot.unwrap().generation, 2);
        assert_eq!(rec.journal, ds[50..]);
        assert_eq!(store.journal_len(), (ds.len() - 50) as u64);
        let e2 = rebuild(rec);
        assert_eq!(encoded(&e2.persisted()), encoded(&e.persisted()));
        assert_eq!(encoded(&e.persisted()), full(&ds));
    }

    #[test]
    fn rotation_replays_only_newer_events_and_keeps_fallback_journals() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(30);
        let (store, _) = open(dir);
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..10]);
        store.snapshot(&e.persisted()).unwrap(); // generation 2
        feed(&store, &mut e, &ds[10..20]);
        store.snapshot(&e.persisted()).unwrap(); // generation 3
        feed(&store, &mut e, &ds[20..]);
        // Generation 1 is older than the fallback; 2 is kept for it.
        assert_eq!(
            names(dir),
            [
                "LOCK",
                "journal-0000000002.log",
                "journal-0000000003.log",
                SNAPSHOT_FILE,
                PREV_SNAPSHOT_FILE
            ]
        );
        drop(store);
        let (_, rec) = open(dir);
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        assert_eq!(rec.journal, ds[20..]);
        assert_eq!(encoded(&rebuild(rec).persisted()), full(&ds));
        assert!(verify(dir).unwrap().contains("ok: no problems"));
    }

    #[test]
    fn crash_between_rotation_and_snapshot_replays_both_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(20);
        let (store, _) = open(dir);
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..15]);
        let rotation = store.rotate().unwrap();
        feed(&store, &mut e, &ds[15..]);
        drop(rotation); // the process died before writing the snapshot
        fs::write(dir.join(SNAPSHOT_TMP), b"half a snapshot").unwrap();
        drop(store);
        let (store, rec) = open(dir);
        assert!(rec.persisted.is_none());
        assert_eq!(rec.journal, ds);
        assert!(!dir.join(SNAPSHOT_TMP).exists());
        assert_eq!(store.journal_len(), ds.len() as u64);
    }

    #[test]
    fn crash_after_snapshot_rename_does_not_double_apply() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(20);
        let (store, _) = open(dir);
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..8]);
        store.snapshot(&e.persisted()).unwrap(); // generation 2
        feed(&store, &mut e, &ds[8..16]);
        let g2 = fs::read(jpath(dir, 2)).unwrap();
        store.snapshot(&e.persisted()).unwrap(); // generation 3, deletes journal 1
        feed(&store, &mut e, &ds[16..]);
        drop(store);
        // Journal 2 is still there for the fallback; restore journal 1 as if
        // the deletion never ran. Neither may be replayed.
        fs::write(jpath(dir, 1), journal_header(1)).unwrap();
        assert_eq!(fs::read(jpath(dir, 2)).unwrap(), g2);
        let (_, rec) = open(dir);
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        assert_eq!(rec.journal, ds[16..]);
        assert_eq!(encoded(&rebuild(rec).persisted()), full(&ds));
    }

    #[test]
    fn crash_between_the_two_renames_loads_the_demoted_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(20);
        let (store, _) = open(dir);
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..8]);
        store.snapshot(&e.persisted()).unwrap(); // generation 2
        feed(&store, &mut e, &ds[8..]);
        drop(store);
        // Simulate: rotation to 3 happened, snapshot.bin was renamed to
        // snapshot.prev.bin, then the process died before the second rename.
        fs::rename(dir.join(SNAPSHOT_FILE), dir.join(PREV_SNAPSHOT_FILE)).unwrap();
        {
            let mut f = create_journal(dir, 3).unwrap();
            f.flush().unwrap();
        }
        fs::write(dir.join(SNAPSHOT_TMP), b"complete or not").unwrap();
        let (store, rec) = open(dir);
        assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
        assert!(rec.warnings[0].contains("missing"));
        assert_eq!(rec.snapshot.unwrap().generation, 2);
        assert_eq!(rec.journal, ds[8..]);
        let mut e2 = rebuild(rec);
        assert_eq!(encoded(&e2.persisted()), full(&ds));
        // The next snapshot keeps the loaded one as the fallback.
        let more = ticket(1000);
        feed(&store, &mut e2, &more);
        store.snapshot(&e2.persisted()).unwrap();
        drop(store);
        let (_, rec) = open(dir);
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        assert!(rec.journal.is_empty());
        assert!(dir.join(PREV_SNAPSHOT_FILE).exists());
    }

    #[test]
    fn torn_tail_is_truncated_with_a_warning() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(3);
        let (store, _) = open(dir);
        for d in &ds {
            store.append(d).unwrap();
        }
        drop(store);
        let path = jpath(dir, 1);
        let offsets = record_offsets(&path);
        let last = *offsets.last().unwrap();
        let len = fs::metadata(&path).unwrap().len();
        // Cut the last record in its payload.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (store, rec) = open(dir);
        assert_eq!(rec.journal, ds[..ds.len() - 1]);
        assert_eq!(rec.warnings.len(), 1);
        assert!(rec.warnings[0].contains("torn"), "{}", rec.warnings[0]);
        assert_eq!(fs::metadata(&path).unwrap().len(), last);
        // Appending continues cleanly after the cut.
        store.append(&ds[ds.len() - 1]).unwrap();
        drop(store);
        let (_, rec) = open(dir);
        assert!(rec.warnings.is_empty());
        assert_eq!(rec.journal, ds);
    }

    #[test]
    fn torn_header_and_zero_filled_tails_are_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(2);
        let (store, _) = open(dir);
        for d in &ds {
            store.append(d).unwrap();
        }
        drop(store);
        let path = jpath(dir, 1);
        let good = fs::read(&path).unwrap();
        for tail in [vec![7u8, 0, 0], vec![0u8; 4096]] {
            let mut b = good.clone();
            b.extend_from_slice(&tail);
            fs::write(&path, &b).unwrap();
            let (_, rec) = open(dir);
            assert_eq!(rec.journal, ds);
            assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
            assert!(rec.warnings[0].contains("torn"));
            assert_eq!(fs::read(&path).unwrap(), good);
        }
        // A damaged payload in the very last record is indistinguishable from
        // a torn write: truncated, with a warning.
        let last = *record_offsets(&path).last().unwrap();
        flip(&path, last + RECORD_HEADER_LEN as u64 + 3);
        let (_, rec) = open(dir);
        assert_eq!(rec.journal, ds[..ds.len() - 1]);
        assert!(rec.warnings[0].contains("torn or damaged"));
    }

    #[test]
    fn bit_flip_in_the_middle_stops_and_keeps_the_file_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(6);
        let (store, _) = open(dir);
        for d in &ds {
            store.append(d).unwrap();
        }
        drop(store);
        let path = jpath(dir, 1);
        let original = fs::read(&path).unwrap();
        let offsets = record_offsets(&path);
        // A payload byte of record 4.
        flip(&path, offsets[4] + RECORD_HEADER_LEN as u64 + 10);
        let damaged = fs::read(&path).unwrap();
        let (store, rec) = open(dir);
        assert_eq!(rec.journal, ds[..4]);
        assert_eq!(rec.warnings.len(), 1);
        let w = &rec.warnings[0];
        assert!(
            w.contains("corrupt") && w.contains("STOPPED") && w.contains("corrupt-1"),
            "{w}"
        );
        let aside = dir.join("journal-0000000001.corrupt-1");
        assert_eq!(fs::read(&aside).unwrap(), damaged);
        assert_eq!(fs::metadata(&path).unwrap().len(), offsets[4]);
        assert_eq!(store.journal_len(), 4);
        drop(store);
        assert_ne!(original, damaged);

        // A flipped length field is corruption too, not a torn tail.
        fs::write(&path, &original).unwrap();
        flip(&path, offsets[2] + 2);
        let (_, rec) = open(dir);
        assert_eq!(rec.journal, ds[..2]);
        assert!(
            rec.warnings[0].contains("record header checksum"),
            "{:?}",
            rec.warnings
        );
        assert!(dir.join("journal-0000000001.corrupt-2").exists());
    }

    #[test]
    fn corruption_moves_later_generations_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(6);
        let (store, _) = open(dir);
        for d in &ds[..5] {
            store.append(d).unwrap();
        }
        let _ = store.rotate().unwrap();
        for d in &ds[5..] {
            store.append(d).unwrap();
        }
        drop(store);
        let offsets = record_offsets(&jpath(dir, 1));
        flip(&jpath(dir, 1), offsets[1] + RECORD_HEADER_LEN as u64);
        let (store, rec) = open(dir);
        assert_eq!(rec.journal, ds[..1]);
        assert!(rec.warnings[0].contains("journal-0000000002.corrupt-1"));
        assert!(!jpath(dir, 2).exists());
        // Appends go on in generation 1; a rotation recreates generation 2.
        store.append(&ds[1]).unwrap();
        let _ = store.rotate().unwrap();
        store.append(&ds[2]).unwrap();
        drop(store);
        let (_, rec) = open(dir);
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        assert_eq!(rec.journal, [ds[0].clone(), ds[1].clone(), ds[2].clone()]);
    }

    #[test]
    fn damaged_journal_header_sets_the_file_aside() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(4);
        let (store, _) = open(dir);
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..3]);
        store.snapshot(&e.persisted()).unwrap(); // generation 2
        feed(&store, &mut e, &ds[3..]);
        drop(store);
        flip(&jpath(dir, 2), 14); // the generation field
        let (store, rec) = open(dir);
        assert!(rec.journal.is_empty());
        assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
        assert!(
            rec.warnings[0].contains("header checksum mismatch"),
            "{:?}",
            rec.warnings
        );
        let aside = dir.join("journal-0000000002.corrupt-1");
        assert!(aside.exists());
        assert!(inspect(&aside)
            .unwrap()
            .contains(&format!("records:     {}", ds.len() - 3)));
        // A fresh generation 2 takes its place.
        store.append(&ds[3]).unwrap();
        drop(store);
        let (_, rec) = open(dir);
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        assert_eq!(rec.journal, ds[3..4]);
        // A file too short to hold a header is described, not a panic.
        fs::write(dir.join("short"), &JOURNAL_MAGIC[..]).unwrap();
        assert!(inspect(&dir.join("short"))
            .unwrap()
            .contains("CORRUPT at offset 0"));
    }

    #[test]
    fn corrupt_snapshot_falls_back_to_the_previous_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(30);
        let (store, _) = open(dir);
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..20]);
        store.snapshot(&e.persisted()).unwrap(); // generation 2
        feed(&store, &mut e, &ds[20..40]);
        store.snapshot(&e.persisted()).unwrap(); // generation 3
        feed(&store, &mut e, &ds[40..]);
        drop(store);
        let cur = dir.join(SNAPSHOT_FILE);
        let len = fs::metadata(&cur).unwrap().len();
        flip(&cur, len / 2);
        let (store, rec) = open(dir);
        assert_eq!(rec.warnings.len(), 1);
        let w = &rec.warnings[0];
        assert!(
            w.contains("corrupt") && w.contains(PREV_SNAPSHOT_FILE),
            "{w}"
        );
        assert_eq!(rec.snapshot.unwrap().generation, 2);
        assert_eq!(rec.journal, ds[20..]);
        assert!(dir.join("snapshot.corrupt-1.bin").exists());
        assert!(!cur.exists());
        let mut e2 = rebuild(rec);
        assert_eq!(encoded(&e2.persisted()), full(&ds));
        // The next snapshot does not demote anything corrupt.
        store.snapshot(&e2.persisted()).unwrap();
        feed(&store, &mut e2, &ticket(500));
        drop(store);
        let (_, rec) = open(dir);
        assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
        assert_eq!(rec.journal, ticket(500));
    }

    #[test]
    fn flipped_snapshot_header_and_version_bit_rot_fall_back() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(10);
        let (store, _) = open(dir);
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..5]);
        store.snapshot(&e.persisted()).unwrap();
        feed(&store, &mut e, &ds[5..]);
        store.snapshot(&e.persisted()).unwrap();
        drop(store);
        let good = fs::read(dir.join(SNAPSHOT_FILE)).unwrap();
        for at in [9u64, 17, 35] {
            fs::write(dir.join(SNAPSHOT_FILE), &good).unwrap();
            flip(&dir.join(SNAPSHOT_FILE), at);
            let (_, rec) = open(dir);
            assert_eq!(rec.snapshot.unwrap().generation, 2, "flip at {at}");
            assert_eq!(encoded(&rebuild(rec).persisted()), full(&ds));
            // Restore the demoted fallback state for the next round.
            fs::rename(dir.join(PREV_SNAPSHOT_FILE), dir.join("p")).unwrap();
            fs::rename(dir.join("p"), dir.join(PREV_SNAPSHOT_FILE)).unwrap();
        }
    }

    #[test]
    fn unknown_version_refuses_to_start() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (store, _) = open(dir);
        store.snapshot(&Persisted::default()).unwrap();
        drop(store);
        let path = dir.join(SNAPSHOT_FILE);
        let mut b = fs::read(&path).unwrap();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&b[..44]);
        b[44..48].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &b).unwrap();
        let err = Store::open(dir, SyncPolicy::EveryRecord).unwrap_err();
        assert!(matches!(err, StoreError::UnknownVersion { found: 2, .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("version 2") && msg.contains("run the seshat release"),
            "{msg}"
        );
        assert!(fs::read(&path).unwrap() == b, "the file is left alone");

        // Same for a journal.
        fs::remove_file(&path).unwrap();
        let tmp2 = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp2.path());
        drop(store);
        let jp = jpath(tmp2.path(), 1);
        let mut b = fs::read(&jp).unwrap();
        b[8..12].copy_from_slice(&9u32.to_le_bytes());
        let crc = crc32fast::hash(&b[..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        fs::write(&jp, &b).unwrap();
        let err = Store::open(tmp2.path(), SyncPolicy::EveryRecord).unwrap_err();
        assert!(matches!(
            err,
            StoreError::UnknownVersion {
                kind: "journal",
                found: 9,
                ..
            }
        ));
    }

    #[test]
    fn no_loadable_state_refuses_but_a_complete_journal_rebuilds() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(10);
        let (store, _) = open(dir);
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..10]);
        store.snapshot(&e.persisted()).unwrap(); // generation 2, journal 1 kept
        feed(&store, &mut e, &ds[10..]);
        drop(store);
        flip(&dir.join(SNAPSHOT_FILE), 100);
        // No fallback, but journal 1 holds the whole history.
        let (store, rec) = open(dir);
        assert!(rec.persisted.is_none());
        assert_eq!(rec.journal, ds);
        assert_eq!(rec.warnings.len(), 2, "{:?}", rec.warnings);
        let mut e = rebuild(rec);
        store.snapshot(&e.persisted()).unwrap();
        feed(&store, &mut e, &ticket(99));
        store.snapshot(&e.persisted()).unwrap(); // deletes journals < 3
        drop(store);
        for f in [SNAPSHOT_FILE, PREV_SNAPSHOT_FILE] {
            flip(&dir.join(f), 60);
        }
        let before = names(dir);
        let err = Store::open(dir, SyncPolicy::EveryRecord).unwrap_err();
        assert!(matches!(err, StoreError::NoValidState { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("restore snapshot.bin from a backup"));
        let mut after = names(dir);
        after.retain(|n| n != PROBE_TMP);
        assert_eq!(before, after, "nothing is changed when refusing");
        assert!(matches!(verify(dir), Err(StoreError::Problems(_))));
    }

    #[test]
    fn missing_generation_is_a_gap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (store, _) = open(dir);
        for k in 1..=3 {
            for d in ticket(k) {
                store.append(&d).unwrap();
            }
            let _ = store.rotate().unwrap();
        }
        drop(store);
        fs::remove_file(jpath(dir, 2)).unwrap();
        let err = Store::open(dir, SyncPolicy::EveryRecord).unwrap_err();
        assert!(
            matches!(err, StoreError::JournalGap { missing: 2, .. }),
            "{err}"
        );
        assert!(verify(dir).is_err());
    }

    #[test]
    fn second_open_is_locked_out() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let err = Store::open(tmp.path(), SyncPolicy::EveryRecord).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        drop(store);
        let _ = open(tmp.path());
    }

    #[test]
    fn read_only_dir_is_a_clear_error() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ro");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o555)).unwrap();
        if File::create(dir.join("probe")).is_ok() {
            // Running with CAP_DAC_OVERRIDE (root): permissions do not bind;
            // `read_only_mount_is_a_clear_error` covers this case.
            eprintln!("skipped: this user can write to a 0555 directory");
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
            return;
        }
        let err = Store::open(&dir, SyncPolicy::EveryRecord).unwrap_err();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
        assert!(err.to_string().contains("DATA_DIR"));
    }

    #[test]
    fn data_dir_under_a_file_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, b"x").unwrap();
        let err = Store::open(&file.join("data"), SyncPolicy::EveryRecord).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("create data directory") && msg.contains("file/data"),
            "{msg}"
        );
    }

    #[test]
    fn group_commit_flushes_in_the_background() {
        let tmp = tempfile::tempdir().unwrap();
        let ds = stream(50);
        let (store, _) = Store::open(tmp.path(), SyncPolicy::from_millis(2)).unwrap();
        let store = Arc::new(store);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = Arc::clone(&store);
                let ds = ds.clone();
                std::thread::spawn(move || {
                    for d in ds.iter().skip(t).step_by(4) {
                        store.append(d).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // The flusher catches up by itself (polling: the machine may be busy).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (synced, len) = {
                let j = lock(&store.inner.journal);
                (j.synced, j.len)
            };
            if synced == len {
                break;
            }
            assert!(Instant::now() < deadline, "the flusher never synced");
            std::thread::sleep(Duration::from_millis(2));
        }
        store.sync().unwrap();
        drop(store);
        let (_, rec) = open(tmp.path());
        assert_eq!(rec.journal.len(), ds.len());
        let mut got: Vec<_> = rec.journal.iter().map(|d| d.event_id.clone()).collect();
        let mut want: Vec<_> = ds.iter().map(|d| d.event_id.clone()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn stale_rotation_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let old = store.rotate().unwrap();
        let new = store.rotate().unwrap();
        store.write_snapshot(new, &Persisted::default()).unwrap();
        let err = store
            .write_snapshot(old, &Persisted::default())
            .unwrap_err();
        assert!(matches!(
            err,
            StoreError::Stale {
                requested: 2,
                newest: 3
            }
        ));
    }

    #[test]
    fn inspect_and_verify_describe_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ds = stream(12);
        let (store, _) = open(dir);
        let mut e = Engine::new(cfg());
        feed(&store, &mut e, &ds[..20]);
        store.snapshot(&e.persisted()).unwrap();
        feed(&store, &mut e, &ds[20..]);
        drop(store);
        let s = inspect(&dir.join(SNAPSHOT_FILE)).unwrap();
        assert!(s.contains("format version 1"), "{s}");
        assert!(s.contains("helpers:          2 (UH1, UH2)"), "{s}");
        assert!(
            s.contains("created_at:       2026-01-01T00:00:30Z .. "),
            "{s}"
        );
        let j = inspect(&jpath(dir, 2)).unwrap();
        assert!(
            j.contains(&format!("records:     {}", ds.len() - 20)),
            "{j}"
        );
        assert!(j.contains("end:         clean"), "{j}");
        let v = verify(dir).unwrap();
        assert!(
            v.contains(&format!("replay {} journal records", ds.len() - 20)),
            "{v}"
        );

        let offsets = record_offsets(&jpath(dir, 2));
        flip(&jpath(dir, 2), offsets[0] + 14);
        let Err(StoreError::Problems(v)) = verify(dir) else {
            panic!("verify must fail")
        };
        assert!(v.contains("PROBLEM: CORRUPT at offset 24"), "{v}");
        fs::write(dir.join("x"), b"junk").unwrap();
        assert!(inspect(&dir.join("x")).is_err());
    }

    /// Needs root (mounts a 1 MiB tmpfs): a full disk refuses the append,
    /// leaves no partial record behind, and recovers once space is freed.
    /// `cargo test --lib store::tests::full_disk -- --ignored`
    #[test]
    #[ignore]
    fn full_disk_refuses_appends_cleanly() {
        use std::process::Command;
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs");
            return;
        }
        let result = std::panic::catch_unwind(|| {
            let dir = mnt.join("data");
            let (store, _) = open(&dir);
            fs::write(mnt.join("filler"), vec![1u8; 900 << 10]).unwrap();
            let mut n = 0;
            let mut last_err = None;
            'outer: for k in 1.. {
                for d in ticket(k) {
                    match store.append(&d) {
                        Ok(()) => n += 1,
                        Err(e) => {
                            last_err = Some(e);
                            break 'outer;
                        }
                    }
                }
            }
            let e = last_err.unwrap();
            assert_eq!(e.raw_os_error(), Some(28), "{e}"); // ENOSPC
            assert!(store.snapshot(&Persisted::default()).is_err());
            fs::remove_file(mnt.join("filler")).unwrap();
            store.append(&ticket(0)[0]).unwrap();
            drop(store);
            let (_, rec) = open(&dir);
            assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
            assert_eq!(rec.journal.len(), n + 1);
        });
        let _ = Command::new("umount").arg(mnt).status();
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    }

    /// Needs root (mounts a read-only tmpfs).
    /// `cargo test --lib store::tests::read_only_mount -- --ignored`
    #[test]
    #[ignore]
    fn read_only_mount_is_a_clear_error() {
        use std::process::Command;
        let tmp = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
            .arg(tmp.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs");
            return;
        }
        let err = Store::open(tmp.path(), SyncPolicy::EveryRecord).unwrap_err();
        let err2 = Store::open(&tmp.path().join("sub"), SyncPolicy::EveryRecord).unwrap_err();
        let _ = Command::new("umount").arg(tmp.path()).status();
        assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
        assert!(matches!(err2, StoreError::NotWritable { .. }), "{err2}");
        assert!(err
            .to_string()
            .contains("set DATA_DIR to a writable directory"));
    }

    /// Snapshot write/load time and size at 100k and 1M tickets (best and
    /// median of 3), and journal append cost per policy.
    /// `cargo test --release --lib store::tests::measure -- --ignored --nocapture`
    /// (`SESHAT_BENCH_TICKETS=100000,1000000` by default).
    #[test]
    #[ignore]
    fn measure_snapshot_and_journal() {
        let sizes: Vec<u64> = std::env::var("SESHAT_BENCH_TICKETS")
            .unwrap_or_else(|_| "100000,1000000".into())
            .split(',')
            .map(|s| s.trim().parse().unwrap())
            .collect();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let summary = |mut v: Vec<Duration>| {
            v.sort();
            format!(
                "best {:.0} ms, median {:.0} ms",
                ms(v[0]),
                ms(v[v.len() / 2])
            )
        };
        for n in sizes {
            let tmp = tempfile::tempdir().unwrap();
            let started = Instant::now();
            let mut e = Engine::new(cfg());
            let mut events = 0;
            for k in 1..=n {
                for d in ticket(k) {
                    e.apply(&d);
                    events += 1;
                }
            }
            let build = started.elapsed();
            let (store, _) = open(tmp.path());
            let (mut capture, mut write, mut load, mut restore) = (vec![], vec![], vec![], vec![]);
            let mut bytes = 0;
            for _ in 0..3 {
                let t = Instant::now();
                let p = e.persisted();
                capture.push(t.elapsed());
                let info = store.snapshot(&p).unwrap();
                write.push(info.duration);
                bytes = info.bytes;
            }
            drop(store);
            for _ in 0..3 {
                let t = Instant::now();
                let (store, rec) = open(tmp.path());
                load.push(t.elapsed());
                drop(store);
                let t = Instant::now();
                let e2 = Engine::restore(cfg(), rec.persisted.unwrap()).expect("same channels");
                restore.push(t.elapsed());
                assert_eq!(e2.ticket_count(), e.ticket_count());
            }
            println!(
                "{n} tickets ({events} events applied in {:.1} s): snapshot {:.1} MB",
                build.as_secs_f64(),
                bytes as f64 / 1e6
            );
            println!("  write (encode+write+fsync+renames): {}", summary(write));
            println!(
                "  load (read+crc+decode, in Store::open): {}",
                summary(load)
            );
            println!(
                "  Engine::persisted() (engine, not store): {}",
                summary(capture)
            );
            println!(
                "  Engine::restore() (engine, not store): {}",
                summary(restore)
            );
        }
        let ds = stream(10_000);
        for (policy, count) in [
            (SyncPolicy::EveryRecord, 2_000usize),
            (SyncPolicy::from_millis(10), ds.len()),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let (store, _) = Store::open(tmp.path(), policy).unwrap();
            let t = Instant::now();
            for d in ds.iter().cycle().take(count) {
                store.append(d).unwrap();
            }
            let per = t.elapsed() / count as u32;
            println!(
                "journal append {policy:?}: {:.1} µs/event over {count} events ({} bytes/event)",
                per.as_secs_f64() * 1e6,
                store.journal_bytes() / count as u64
            );
        }
    }
}
