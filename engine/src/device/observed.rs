//! [`Observed`]: a device wrapper that counts every request it passes on and shows each one to
//! an [`Observer`] (a trace, a checker, a tracker of what changed).

use super::{BlockDevice, IoError, ReadReq, WriteReq};

/// What an [`Observed`] device was asked to do: every request it passed on, whether or not the
/// inner device then failed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Read requests, each request of a batch counted.
    pub read_ops: u64,
    pub bytes_read: u64,
    /// Write requests, each request of a batch counted.
    pub write_ops: u64,
    pub bytes_written: u64,
    /// Write requests with FUA set.
    pub fua_writes: u64,
    pub flushes: u64,
    /// `read_batch` and `write_batch` calls.
    pub read_batches: u64,
    pub write_batches: u64,
    /// Requests the inner device returned an error for; every request of a batch that failed
    /// (the device does not say which of them).
    pub failed: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    /// What happened between two readings.
    fn sub(self, o: Counts) -> Counts {
        Counts {
            read_ops: self.read_ops - o.read_ops,
            bytes_read: self.bytes_read - o.bytes_read,
            write_ops: self.write_ops - o.write_ops,
            bytes_written: self.bytes_written - o.bytes_written,
            fua_writes: self.fua_writes - o.fua_writes,
            flushes: self.flushes - o.flushes,
            read_batches: self.read_batches - o.read_batches,
            write_batches: self.write_batches - o.write_batches,
            failed: self.failed - o.failed,
        }
    }
}

/// One request, as an [`Observer`] sees it.
#[derive(Debug)]
pub enum Op<'a> {
    /// `data` is what the read returned (unspecified if it failed).
    Read {
        sector: u64,
        data: &'a [u8],
    },
    Write {
        sector: u64,
        data: &'a [u8],
        fua: bool,
    },
    Flush,
    /// A `read_batch`; a [`Op::Read`] of each request follows, in the slice's order.
    ReadBatch(&'a [ReadReq<'a>]),
    /// A `write_batch`; a [`Op::Write`] of each request follows, in the slice's order.
    WriteBatch(&'a [WriteReq<'a>]),
}

/// Sees every request an [`Observed`] device passes on, once the inner device returned, in the
/// order the device was asked; `failed` if the inner device returned an error for it (or for
/// its batch).
pub trait Observer {
    fn observe(&mut self, op: &Op<'_>, failed: bool);
}

/// No observer: the wrapper only counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn observe(&mut self, _: &Op<'_>, _: bool) {}
}

impl<F: FnMut(&Op<'_>, bool)> Observer for F {
    fn observe(&mut self, op: &Op<'_>, failed: bool) {
        self(op, failed)
    }
}

/// A device that counts every request on its way to `D` ([`Counts`]) and shows it to `O`.
/// Batches go to `D` as batches, so a device that runs them concurrently still does.
#[derive(Clone, Debug)]
pub struct Observed<D, O = NoObserver> {
    inner: D,
    counts: Counts,
    observer: O,
}

impl<D> Observed<D> {
    /// Counts only.
    pub fn new(inner: D) -> Self {
        Observed::with_observer(inner, NoObserver)
    }
}

impl<D, O> Observed<D, O> {
    pub fn with_observer(inner: D, observer: O) -> Self {
        Observed {
            inner,
            counts: Counts::default(),
            observer,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn observer(&self) -> &O {
        &self.observer
    }

    pub fn observer_mut(&mut self) -> &mut O {
        &mut self.observer
    }

    pub fn inner(&self) -> &D {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut D {
        &mut self.inner
    }

    pub fn into_inner(self) -> D {
        self.inner
    }

    fn count_read(&mut self, len: usize, failed: bool) {
        self.counts.read_ops += 1;
        self.counts.bytes_read += len as u64;
        self.counts.failed += failed as u64;
    }

    fn count_write(&mut self, len: usize, fua: bool, failed: bool) {
        self.counts.write_ops += 1;
        self.counts.bytes_written += len as u64;
        self.counts.fua_writes += fua as u64;
        self.counts.failed += failed as u64;
    }
}

impl<D: BlockDevice, O: Observer> BlockDevice for Observed<D, O> {
    fn size_sectors(&self) -> u64 {
        self.inner.size_sectors()
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let r = self.inner.read(sector, buf);
        self.count_read(buf.len(), r.is_err());
        self.observer
            .observe(&Op::Read { sector, data: buf }, r.is_err());
        r
    }

    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        let r = self.inner.write(sector, data, fua);
        self.count_write(data.len(), fua, r.is_err());
        self.observer
            .observe(&Op::Write { sector, data, fua }, r.is_err());
        r
    }

    fn flush(&mut self) -> Result<(), IoError> {
        let r = self.inner.flush();
        self.counts.flushes += 1;
        self.counts.failed += r.is_err() as u64;
        self.observer.observe(&Op::Flush, r.is_err());
        r
    }

    fn write_batch(&mut self, writes: &[WriteReq<'_>]) -> Result<(), IoError> {
        let r = self.inner.write_batch(writes);
        let failed = r.is_err();
        self.counts.write_batches += 1;
        self.observer.observe(&Op::WriteBatch(writes), failed);
        for w in writes {
            self.count_write(w.data.len(), w.fua, failed);
            let op = Op::Write {
                sector: w.sector,
                data: w.data,
                fua: w.fua,
            };
            self.observer.observe(&op, failed);
        }
        r
    }

    fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
        let r = self.inner.read_batch(reads);
        let failed = r.is_err();
        self.counts.read_batches += 1;
        self.observer.observe(&Op::ReadBatch(reads), failed);
        for rq in reads.iter() {
            self.count_read(rq.buf.len(), failed);
            let op = Op::Read {
                sector: rq.sector,
                data: rq.buf,
            };
            self.observer.observe(&op, failed);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    #[test]
    fn counts_exactly_what_was_asked() {
        let mut d = Observed::new(MemDevice::new(16));
        d.write(0, &[1u8; 1024], false).unwrap();
        d.write(2, &[2u8; 512], true).unwrap();
        d.read(0, &mut [0u8; 1536]).unwrap();
        d.flush().unwrap();
        let before = d.counts();
        d.write_batch(&[
            WriteReq {
                sector: 4,
                data: &[3u8; 512],
                fua: false,
            },
            WriteReq {
                sector: 8,
                data: &[4u8; 2048],
                fua: true,
            },
        ])
        .unwrap();
        let (mut a, mut b) = ([0u8; 512], [0u8; 2048]);
        d.read_batch(&mut [
            ReadReq {
                sector: 4,
                buf: &mut a,
            },
            ReadReq {
                sector: 8,
                buf: &mut b,
            },
        ])
        .unwrap();
        assert_eq!(
            (a, b),
            ([3u8; 512], [4u8; 2048]),
            "the batches reached the device"
        );
        // A failing request is passed on and counted as failed.
        assert!(d.read(16, &mut [0u8; 512]).is_err());
        assert_eq!(
            before,
            Counts {
                read_ops: 1,
                bytes_read: 1536,
                write_ops: 2,
                bytes_written: 1536,
                fua_writes: 1,
                flushes: 1,
                ..Counts::default()
            }
        );
        assert_eq!(
            d.counts() - before,
            Counts {
                read_ops: 3,
                bytes_read: 3072,
                write_ops: 2,
                bytes_written: 2560,
                fua_writes: 1,
                read_batches: 1,
                write_batches: 1,
                failed: 1,
                ..Counts::default()
            }
        );
        assert_eq!(d.into_inner().bytes()[..512], [1u8; 512]);
    }

    /// Each op as a line, the observer's view.
    fn show(op: &Op<'_>, failed: bool) -> String {
        let f = if failed { " failed" } else { "" };
        match op {
            Op::Read { sector, data } => format!("read {sector}+{} {}{f}", data.len(), data[0]),
            Op::Write { sector, data, fua } => {
                format!("write {sector}+{} {} fua={fua}{f}", data.len(), data[0])
            }
            Op::Flush => format!("flush{f}"),
            Op::ReadBatch(r) => format!("read batch of {}{f}", r.len()),
            Op::WriteBatch(w) => format!("write batch of {}{f}", w.len()),
        }
    }

    #[test]
    fn the_observer_sees_every_request_in_order_with_what_was_read() {
        let mut log = Vec::new();
        let mut d = Observed::with_observer(MemDevice::new(4), |op: &Op<'_>, failed: bool| {
            log.push(show(op, failed))
        });
        d.write(1, &[5u8; 512], true).unwrap();
        let mut buf = [0u8; 512];
        d.read(1, &mut buf).unwrap();
        d.write_batch(&[
            WriteReq {
                sector: 0,
                data: &[6u8; 512],
                fua: false,
            },
            WriteReq {
                sector: 2,
                data: &[7u8; 1024],
                fua: false,
            },
        ])
        .unwrap();
        d.read_batch(&mut [ReadReq {
            sector: 3,
            buf: &mut buf,
        }])
        .unwrap();
        d.flush().unwrap();
        assert!(d.write(3, &[8u8; 1024], false).is_err());
        drop(d);
        assert_eq!(
            log,
            [
                "write 1+512 5 fua=true",
                "read 1+512 5",
                "write batch of 2",
                "write 0+512 6 fua=false",
                "write 2+1024 7 fua=false",
                "read batch of 1",
                "read 3+512 7",
                "flush",
                "write 3+1024 8 fua=false failed",
            ]
        );
    }
}
