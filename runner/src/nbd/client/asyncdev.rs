//! The asynchronous face of `NbdDevice`: the executor's [`AsyncDevice`], which `serve` gives
//! the engine thread for an NBD export (files get `Uring` or `Pooled` instead).
//!
//! `submit` maps the engine's operation onto one client request (a read, a write with or
//! without FUA, a flush) and returns at once; the request's outcome completes the [`Done`]
//! exactly once, from the connection's reply-reader thread (or before `submit` returns when
//! the request needs no round trip: out of range, or the connection already dead). A dead
//! connection fails everything outstanding and everything after it with an `IoError` naming
//! the device and the cause, so the cache goes dead as it does on a failing file.
//!
//! Never blocking: `submit` uses `NbdDevice::submit_nowait`, which queues the request whatever
//! the queue holds; the writer thread still puts at most the window (64 pieces, 64 MiB of
//! payload) on the wire. The queue is bounded by what the engine has outstanding on the
//! device, which the executor does not cap for any backend (`Pooled`'s FIFO and `Uring`'s
//! queue past its 128 are unbounded alike); the engine caps it with its own resources: device
//! writes are its RAM buffers' segments (`nr_rambuf_pool`, ≤ 1024), its record blocks and the
//! blocks of one writeback batch (`nr_max_batched_writeback` segments), device reads serve
//! client requests (≤ 64 connections × 256 requests in flight each, docs/DESIGN.md "Bounds")
//! and that batch, and at most one flush per device is in flight (`WriteClock`). A queued
//! write holds the engine's own buffer (no copy), a queued read nothing until its reply
//! arrives, so the queue costs little beyond what the engine already holds.

use engine::{Access, IoDone, IoError, IoKind, IoOp};

use super::{NbdDevice, NbdReq, SECTOR};
use crate::executor::{AsyncDevice, Done};

impl AsyncDevice for NbdDevice {
    fn size_sectors(&self) -> u64 {
        NbdDevice::size_sectors(self)
    }

    fn submit(&self, op: IoOp, done: Done) {
        let (req, want) = match op.kind {
            IoKind::Read { sector, len } => (NbdReq::Read { sector, len }, Some((sector, len))),
            // The engine's buffer goes out as it is: `IoData` is shared and immutable while
            // the write is in flight.
            IoKind::Write { sector, data, fua } => (NbdReq::write(sector, data, fua), None),
            IoKind::Flush => (NbdReq::Flush, None),
        };
        let flush = matches!(req, NbdReq::Flush);
        self.submit_nowait(
            req,
            Box::new(move |outcome| {
                let result = match (outcome, want) {
                    (Err(e), _) => Err(e),
                    (Ok(Some(data)), Some((_, len))) if data.len() == len => Ok(IoDone::Read(data)),
                    (Ok(_), Some((sector, len))) => Err(IoError::new(
                        Access::Read,
                        sector,
                        len as u64 / SECTOR,
                        "a read without its data",
                    )),
                    (Ok(_), None) if flush => Ok(IoDone::Flush),
                    (Ok(_), None) => Ok(IoDone::Write),
                };
                done.complete(result);
            }),
        );
    }

    fn busy_ns(&self) -> u64 {
        NbdDevice::busy_ns(self)
    }
}
