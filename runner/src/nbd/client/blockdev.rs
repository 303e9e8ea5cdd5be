//! The synchronous face of `NbdDevice`: `engine::BlockDevice`, for the offline tools and for
//! recovery, which runs on `SyncEngine` before `serve` hands the device to the executor. Each call submits and waits; a batch is submitted whole, so
//! its requests are in flight together (the window permitting).

use std::sync::mpsc;

use engine::{BlockDevice, IoError, ReadReq, WriteReq};

use super::{Access, NbdDevice, NbdReq, Outcome, SECTOR};

impl NbdDevice {
    /// Submits and waits.
    fn wait(&self, req: NbdReq) -> Outcome {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().expect("submit calls done exactly once")
    }

    /// Submits every request of a batch, then waits for all; the error reported is the
    /// first failing request in batch order, as the one-by-one loop would report.
    fn wait_all(
        &self,
        reqs: Vec<NbdReq>,
        mut each: impl FnMut(usize, Option<Vec<u8>>),
    ) -> Result<(), IoError> {
        let n = reqs.len();
        let (tx, rx) = mpsc::channel();
        for (i, req) in reqs.into_iter().enumerate() {
            let tx = tx.clone();
            self.submit(
                req,
                Box::new(move |r| {
                    let _ = tx.send((i, r));
                }),
            );
        }
        drop(tx);
        let mut first_err: Option<(usize, IoError)> = None;
        for _ in 0..n {
            let (i, r) = rx.recv().expect("submit calls done exactly once");
            match r {
                Ok(data) => each(i, data),
                Err(e) => {
                    if first_err.as_ref().is_none_or(|(j, _)| i < *j) {
                        first_err = Some((i, e));
                    }
                }
            }
        }
        first_err.map_or(Ok(()), |(_, e)| Err(e))
    }
}

fn unexpected(op: Access, sector: u64, len: usize, what: &str) -> IoError {
    IoError::new(op, sector, len as u64 / SECTOR, what.to_string())
}

impl BlockDevice for NbdDevice {
    fn size_sectors(&self) -> u64 {
        NbdDevice::size_sectors(self)
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let len = buf.len();
        match self.wait(NbdReq::Read { sector, len })? {
            Some(data) if data.len() == len => {
                buf.copy_from_slice(&data);
                Ok(())
            }
            _ => Err(unexpected(
                Access::Read,
                sector,
                len,
                "a read without its data",
            )),
        }
    }

    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        self.wait(NbdReq::write(sector, data.to_vec(), fua))
            .map(|_| ())
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.wait(NbdReq::Flush).map(|_| ())
    }

    /// All of the batch in flight at once (the window permitting).
    fn write_batch(&mut self, writes: &[WriteReq<'_>]) -> Result<(), IoError> {
        let reqs = writes
            .iter()
            .map(|w| NbdReq::write(w.sector, w.data.to_vec(), w.fua))
            .collect();
        self.wait_all(reqs, |_, _| {})
    }

    /// All of the batch in flight at once (the window permitting).
    fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
        let reqs = reads
            .iter()
            .map(|r| NbdReq::Read {
                sector: r.sector,
                len: r.buf.len(),
            })
            .collect();
        let mut short = None;
        self.wait_all(reqs, |i, data| match data {
            Some(d) if d.len() == reads[i].buf.len() => reads[i].buf.copy_from_slice(&d),
            _ => short = short.or(Some(i)),
        })?;
        match short {
            Some(i) => Err(unexpected(
                Access::Read,
                reads[i].sector,
                reads[i].buf.len(),
                "a read without its data",
            )),
            None => Ok(()),
        }
    }
}
