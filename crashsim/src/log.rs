//! The world's single operation log: every device operation and every client event the harness
//! records, each with a global sequence number. Crash states are rebuilt from it, and it prints
//! compactly for replay and debugging.

use engine::format::SECTOR_SIZE;
use engine::{DeviceRole, IoError};
use models::OpId;
use std::fmt;
use std::rc::Rc;

/// What became of a device write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteEffect {
    /// Completed: landed at sector `at` (differs from the address when misdirected); durable at
    /// once if `durable` (a FUA the device honoured).
    Landed { at: u64, durable: bool },
    /// Returned an error and changed nothing.
    Failed(IoError),
}

/// What became of a device flush.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlushEffect {
    /// Every pending write became durable.
    Done,
    /// Returned Ok without making anything durable (the lying-flush fault).
    Lied,
    /// Returned an error and made nothing durable.
    Failed(IoError),
}

/// A client request as the harness describes it in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Write {
        sector: u64,
        sectors: u64,
        fua: bool,
    },
    Flush,
}

/// What an operation handed out by the engine asks for (the asynchronous driver logs it when
/// the operation is handed out; its effect is logged when it completes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Submitted {
    Read {
        sector: u64,
        sectors: u64,
    },
    Write {
        sector: u64,
        data: Rc<[u8]>,
        fua: bool,
    },
    Flush,
}

/// One logged event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An operation was handed to the device and is in flight until its completion event. A
    /// write in flight may persist (whole or torn) or not at a power cut, like a completed
    /// unflushed one.
    Submit { role: DeviceRole, what: Submitted },
    Read {
        role: DeviceRole,
        sector: u64,
        sectors: u64,
        error: Option<IoError>,
    },
    /// A write completed. `submitted`: the sequence number of its `Submit` (asynchronous
    /// driver), `None` when it was submitted and completed at once.
    Write {
        role: DeviceRole,
        sector: u64,
        data: Rc<[u8]>,
        fua: bool,
        effect: WriteEffect,
        submitted: Option<u64>,
    },
    /// A flush completed. It covers the writes that completed before sequence number
    /// `covers_before` (its submission; its own sequence number when submitted and completed
    /// at once).
    Flush {
        role: DeviceRole,
        effect: FlushEffect,
        covers_before: u64,
    },
    /// A bit of the durable image flipped (the bit-rot fault).
    BitRot {
        role: DeviceRole,
        byte: u64,
        bit: u8,
    },
    /// A label from the harness.
    Mark(String),
    /// The client submitted operation `op` of its `models::History`.
    ClientBegin { op: OpId, what: ClientOp },
    /// The engine answered `op`: acknowledged (`ok`) or failed.
    ClientEnd { op: OpId, ok: bool },
}

/// An event with its global sequence number (its index in the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: u64,
    pub event: Event,
}

impl Event {
    /// The device the event happened on, for device events.
    pub fn role(&self) -> Option<DeviceRole> {
        match self {
            Event::Read { role, .. }
            | Event::Write { role, .. }
            | Event::Flush { role, .. }
            | Event::Submit { role, .. }
            | Event::BitRot { role, .. } => Some(*role),
            Event::Mark(_) | Event::ClientBegin { .. } | Event::ClientEnd { .. } => None,
        }
    }

    pub fn is_device_flush(&self) -> bool {
        matches!(self, Event::Flush { .. })
    }

    /// A write the engine asked to be FUA (whether or not the device honoured it).
    pub fn is_fua_write(&self) -> bool {
        matches!(self, Event::Write { fua: true, .. })
    }

    pub fn is_device_write(&self) -> bool {
        matches!(self, Event::Write { .. })
    }
}

fn sectors_of(data: &[u8]) -> String {
    if data.len() % SECTOR_SIZE == 0 {
        (data.len() / SECTOR_SIZE).to_string()
    } else {
        format!("{}B", data.len())
    }
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} ", self.seq)?;
        match &self.event {
            Event::Read {
                role,
                sector,
                sectors,
                error,
            } => {
                write!(f, "{role} R {sector}+{sectors}")?;
                if let Some(e) = error {
                    write!(f, " EIO ({})", e.detail)?;
                }
                Ok(())
            }
            Event::Submit { role, what } => match what {
                Submitted::Read { sector, sectors } => {
                    write!(f, "{role} submit R {sector}+{sectors}")
                }
                Submitted::Write { sector, data, fua } => write!(
                    f,
                    "{role} submit W {sector}+{}{} crc={:08x}",
                    sectors_of(data),
                    if *fua { " fua" } else { "" },
                    crc32c::crc32c(data)
                ),
                Submitted::Flush => write!(f, "{role} submit F"),
            },
            Event::Write {
                role,
                sector,
                data,
                fua,
                effect,
                submitted,
            } => {
                write!(f, "{role} W {sector}+{}", sectors_of(data))?;
                if let Some(s) = submitted {
                    write!(f, " (submitted #{s})")?;
                }
                if *fua {
                    f.write_str(" fua")?;
                }
                write!(f, " crc={:08x}", crc32c::crc32c(data))?;
                match effect {
                    WriteEffect::Landed { at, durable } => {
                        if at != sector {
                            write!(f, " MISDIRECTED to {at}")?;
                        }
                        if *fua && !durable {
                            f.write_str(" (fua ignored)")?;
                        }
                        Ok(())
                    }
                    WriteEffect::Failed(e) => write!(f, " EIO ({})", e.detail),
                }
            }
            Event::Flush {
                role,
                effect,
                covers_before,
            } => {
                write!(f, "{role} F")?;
                if *covers_before != self.seq {
                    write!(f, " (covers writes completed before #{covers_before})")?;
                }
                match effect {
                    FlushEffect::Done => Ok(()),
                    FlushEffect::Lied => f.write_str(" (lied)"),
                    FlushEffect::Failed(e) => write!(f, " EIO ({})", e.detail),
                }
            }
            Event::BitRot { role, byte, bit } => write!(f, "{role} BITROT byte {byte} bit {bit}"),
            Event::Mark(label) => write!(f, "mark {label:?}"),
            Event::ClientBegin { op, what } => match what {
                ClientOp::Write {
                    sector,
                    sectors,
                    fua,
                } => write!(
                    f,
                    "client {op} write {sector}+{sectors}{}",
                    if *fua { " fua" } else { "" }
                ),
                ClientOp::Flush => write!(f, "client {op} flush"),
            },
            Event::ClientEnd { op, ok } => {
                write!(f, "client {op} {}", if *ok { "done" } else { "FAILED" })
            }
        }
    }
}

/// One line per entry.
pub fn format_entries(entries: &[LogEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        out.push_str(&e.to_string());
        out.push('\n');
    }
    out
}
