//! The engine's typed errors. Bad input (a corrupt image, a wrong size, an out-of-range tunable,
//! a request outside the device) is an `Error`; panics are kept for broken invariants.

use crate::device::{DeviceRole, IoError};
use crate::format::GeometryError;
use thiserror::Error;

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Error {
    #[error("{role} device I/O error: {source}")]
    Io { role: DeviceRole, source: IoError },

    #[error("the cache is dead after an earlier device error ({cause}); reads and writes are refused until it is reopened")]
    Dead { cause: String },

    #[error(
        "request at sector {sector} for {sectors} sector(s) is outside the device ({size} sectors)"
    )]
    OutOfRange {
        sector: u64,
        sectors: u64,
        size: u64,
    },

    #[error("request buffer of {len} bytes is not a whole number of 512-byte sectors")]
    Unaligned { len: usize },

    #[error("cache device holds unknown content: sector 0 is neither blank nor a wbcache/dm-writeboost superblock (magic 0x57427374); refusing to format over it")]
    UnknownContent,

    #[error("cache device holds an interrupted format (its records say formatting) and formatting was not allowed; it needs formatting again")]
    InterruptedFormat,

    #[error("cache device is blank (sector 0 is all zero) and formatting was not allowed")]
    Unformatted,

    #[error("cache device geometry: {0}")]
    Geometry(#[from] GeometryError),

    #[error("backing device has {sectors} sectors; it must have at least one")]
    BackingSize { sectors: u64 },

    #[error("cache device was formatted with {formatted} sectors but now has {actual}; refusing to guess its geometry")]
    CacheResized { formatted: u64, actual: u64 },

    #[error("cache device has format version {0}; this build reads version 1")]
    UnsupportedVersion(u32),

    #[error("cache device is of type {0}; this build knows types 0 (RAM buffers) and 1 (plog)")]
    UnsupportedType(u8),

    #[error("cache device is of type 1 and needs its plog device, which was not given")]
    PlogMissing,

    #[error(
        "a plog device was given but the cache device is of type 0 (formatted without a plog)"
    )]
    PlogUnexpected,

    #[error("plog device belongs to another cache: its generation is {plog}, the cache device's is {cache}")]
    PlogMismatch { cache: u64, plog: u64 },

    #[error("plog device was formatted with {formatted} sectors but now has {actual}; refusing to guess its geometry")]
    PlogResized { formatted: u64, actual: u64 },

    #[error("plog device geometry: {0}")]
    PlogGeometry(#[from] crate::format::plog::PlogGeometryError),

    #[error("segment {id} in slot {slot} maps backing sector {sector}, outside the {backing_sectors}-sector backing device (wrong backing device?)")]
    SegmentOutOfRange {
        id: u64,
        slot: u64,
        sector: u64,
        backing_sectors: u64,
    },

    #[error("replay would drop intact segment(s) {ids:?}, which are newer than segment {stop} where the log stops ({why}), were not written by wbcache (no block CRCs: upstream dm-writeboost wrote them) and are not written back; dm-writeboost would apply them, wbcache cannot apply them past the gap, so it refuses and changes nothing (recover this cache with dm-writeboost)")]
    WouldDiscard {
        ids: Vec<u64>,
        stop: u64,
        why: String,
    },

    #[error("{role} device is corrupt at sector {sector}: {what}")]
    Corrupt {
        role: DeviceRole,
        sector: u64,
        what: String,
    },

    #[error("invalid value {value} for {name}: must be in {min}..={max}")]
    InvalidTunable {
        name: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },

    #[error("invalid value {value:?} for {name}: must be a whole number in {min}..={max}")]
    UnparsableTunable {
        name: &'static str,
        value: String,
        min: u64,
        max: u64,
    },

    #[error("{name} needs a value: `{name} N` with N in {min}..={max}")]
    MissingTunableValue {
        name: &'static str,
        min: u64,
        max: u64,
    },

    #[error(
        "unknown message {0:?}: the messages are drop_caches, clear_stat and TUNABLE VALUE, with \
         TUNABLE one of {names}",
        names = crate::tunables::tunable_names()
    )]
    UnknownMessage(String),

    #[error("invalid nr_rambuf_pool {0}: must be in 1..=1024")]
    InvalidPool(usize),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
