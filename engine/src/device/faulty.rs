//! [`Faulty`]: a device wrapper that injects a chosen [`Fault`] (an I/O error, or silently
//! flipped data) into chosen operations and passes everything else on unchanged.

use std::cell::Cell;

use super::{Access, BlockDevice, IoError};
use crate::format::SECTOR_SIZE;

/// Which operations of the fault's kind it hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hits {
    /// Every one.
    Every,
    /// Every one whose range covers this sector. A flush has no range: never hit.
    Sector(u64),
    /// Every one after the first `n` (counted from when the fault was armed): a device that
    /// works for a while, then fails for good.
    After(u64),
}

/// What happens to an operation the fault hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// It fails with an [`IoError`] whose detail is "injected EIO", and does nothing.
    Fail,
    /// It completes, with the first byte inverted: of what a read returns, of what a write
    /// stores (silent corruption). Not for flushes, which carry no data.
    Flip,
}

/// A fault: the kind of operation it hits, which of them, and what it does to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub op: Access,
    pub hits: Hits,
    pub effect: Effect,
}

impl Fault {
    /// Every operation of kind `op` fails.
    pub fn fail(op: Access) -> Self {
        Fault {
            op,
            hits: Hits::Every,
            effect: Effect::Fail,
        }
    }

    /// Every read or write (`op`) completes with its first byte flipped.
    pub fn flip(op: Access) -> Self {
        assert!(op != Access::Flush, "a flush has no data to flip");
        Fault {
            op,
            hits: Hits::Every,
            effect: Effect::Flip,
        }
    }

    /// Only the operations covering `sector`.
    pub fn at_sector(self, sector: u64) -> Self {
        Fault {
            hits: Hits::Sector(sector),
            ..self
        }
    }

    /// Only the operations after the first `n`.
    pub fn after(self, n: u64) -> Self {
        Fault {
            hits: Hits::After(n),
            ..self
        }
    }
}

/// A device that injects the [`Fault`] armed on it, if any, into the operations it hits, and
/// passes every other operation to `D` untouched. The fault can be armed and disarmed through
/// a shared reference (`engine.cache_device().arm(..)`), so a test can change it while an
/// engine owns the device. Batches run request by request (the trait's default), so a fault
/// hits exactly the requests it is for.
#[derive(Debug)]
pub struct Faulty<D> {
    inner: D,
    fault: Cell<Option<Fault>>,
    /// Operations of the fault's kind since it was armed.
    seen: Cell<u64>,
    /// Operations the fault hit, over the device's life.
    injected: Cell<u64>,
}

impl<D> Faulty<D> {
    /// No fault armed yet.
    pub fn new(inner: D) -> Self {
        Faulty {
            inner,
            fault: Cell::new(None),
            seen: Cell::new(0),
            injected: Cell::new(0),
        }
    }

    pub fn with_fault(inner: D, fault: Fault) -> Self {
        let d = Faulty::new(inner);
        d.arm(fault);
        d
    }

    /// Replaces the armed fault; [`Hits::After`] counts from here.
    pub fn arm(&self, fault: Fault) {
        self.fault.set(Some(fault));
        self.seen.set(0);
    }

    pub fn disarm(&self) {
        self.fault.set(None);
    }

    pub fn fault(&self) -> Option<Fault> {
        self.fault.get()
    }

    /// How many operations a fault hit.
    pub fn injected(&self) -> u64 {
        self.injected.get()
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

    /// The effect on an operation of kind `op` over `sectors` sectors at `sector`, if the
    /// armed fault hits it.
    fn hit(&self, op: Access, sector: u64, sectors: u64) -> Option<Effect> {
        let f = self.fault.get().filter(|f| f.op == op)?;
        let seen = self.seen.get();
        self.seen.set(seen + 1);
        let hit = match f.hits {
            Hits::Every => true,
            Hits::Sector(s) => sector <= s && s - sector < sectors,
            Hits::After(n) => seen >= n,
        };
        if hit {
            self.injected.set(self.injected.get() + 1);
        }
        hit.then_some(f.effect)
    }
}

fn injected(op: Access, sector: u64, sectors: u64) -> IoError {
    IoError::new(op, sector, sectors, "injected EIO")
}

impl<D: BlockDevice> BlockDevice for Faulty<D> {
    fn size_sectors(&self) -> u64 {
        self.inner.size_sectors()
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let sectors = (buf.len() / SECTOR_SIZE) as u64;
        match self.hit(Access::Read, sector, sectors) {
            Some(Effect::Fail) => Err(injected(Access::Read, sector, sectors)),
            Some(Effect::Flip) => {
                self.inner.read(sector, buf)?;
                if let Some(b) = buf.first_mut() {
                    *b ^= 0xff;
                }
                Ok(())
            }
            None => self.inner.read(sector, buf),
        }
    }

    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        let sectors = (data.len() / SECTOR_SIZE) as u64;
        match self.hit(Access::Write, sector, sectors) {
            Some(Effect::Fail) => Err(injected(Access::Write, sector, sectors)),
            Some(Effect::Flip) if !data.is_empty() => {
                let mut flipped = data.to_vec();
                flipped[0] ^= 0xff;
                self.inner.write(sector, &flipped, fua)
            }
            _ => self.inner.write(sector, data, fua),
        }
    }

    fn flush(&mut self) -> Result<(), IoError> {
        match self.hit(Access::Flush, 0, 0) {
            Some(Effect::Fail) => Err(injected(Access::Flush, 0, 0)),
            _ => self.inner.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    fn dev() -> Faulty<MemDevice> {
        Faulty::new(MemDevice::from_bytes(vec![1u8; 8 * SECTOR_SIZE]))
    }

    /// (read, write, flush) of one sector at `s` each: which succeeded.
    fn probe(d: &mut Faulty<MemDevice>, s: u64) -> (bool, bool, bool) {
        let r = d.read(s, &mut [0u8; SECTOR_SIZE]).is_ok();
        let w = d.write(s, &[1u8; SECTOR_SIZE], false).is_ok();
        (r, w, d.flush().is_ok())
    }

    #[test]
    fn fails_exactly_the_chosen_kind_and_nothing_else() {
        for (op, want) in [
            (Access::Read, (false, true, true)),
            (Access::Write, (true, false, true)),
            (Access::Flush, (true, true, false)),
        ] {
            let mut d = dev();
            assert_eq!(probe(&mut d, 3), (true, true, true), "nothing armed");
            d.arm(Fault::fail(op));
            assert_eq!(probe(&mut d, 3), want, "{op:?}");
            assert_eq!(d.injected(), 1);
            d.disarm();
            assert_eq!(probe(&mut d, 3), (true, true, true), "disarmed");
        }
    }

    #[test]
    fn a_failed_operation_does_nothing_and_says_so() {
        let mut d = Faulty::with_fault(MemDevice::new(4), Fault::fail(Access::Write));
        let err = d.write(1, &[9u8; 1024], true).unwrap_err();
        assert_eq!(err, IoError::new(Access::Write, 1, 2, "injected EIO"));
        assert_eq!(d.into_inner(), MemDevice::new(4));
    }

    #[test]
    fn a_sector_fault_hits_only_operations_covering_it() {
        let mut d = dev();
        d.arm(Fault::fail(Access::Read).at_sector(5));
        let mut buf = [0u8; 2 * SECTOR_SIZE];
        assert!(d.read(4, &mut buf).is_err(), "4..6 covers 5");
        assert!(d.read(5, &mut buf).is_err(), "5..7 covers 5");
        assert!(d.read(3, &mut buf).is_ok(), "3..5 does not");
        assert!(d.read(6, &mut buf).is_ok(), "6..8 does not");
        assert!(d.read(5, &mut []).is_ok(), "an empty read covers nothing");
        assert!(d.write(5, &buf, false).is_ok(), "a write is not a read");
        assert_eq!(d.injected(), 2);
        d.arm(Fault::fail(Access::Write).at_sector(0));
        assert!(d.flush().is_ok(), "a flush covers no sector");
    }

    #[test]
    fn an_after_fault_lets_the_first_n_through_then_fails_for_good() {
        let mut d = dev();
        d.write(0, &[2u8; SECTOR_SIZE], false).unwrap();
        d.arm(Fault::fail(Access::Write).after(2));
        let ok: Vec<bool> = (0..5)
            .map(|i| d.write(i, &[3u8; SECTOR_SIZE], false).is_ok())
            .collect();
        assert_eq!(ok, [true, true, false, false, false]);
        // Reads do not count towards a write fault.
        d.arm(Fault::fail(Access::Write).after(1));
        for _ in 0..3 {
            d.read(0, &mut [0u8; SECTOR_SIZE]).unwrap();
        }
        assert!(d.write(7, &[3u8; SECTOR_SIZE], false).is_ok());
        assert!(d.write(7, &[3u8; SECTOR_SIZE], false).is_err());
        let bytes = d.into_inner().into_bytes();
        let first: Vec<u8> = bytes.chunks(SECTOR_SIZE).map(|s| s[0]).collect();
        assert_eq!(first, [3, 3, 1, 1, 1, 1, 1, 3]);
    }

    #[test]
    fn a_flip_corrupts_silently() {
        let mut d = dev();
        d.arm(Fault::flip(Access::Read).at_sector(2));
        let mut buf = [0u8; 2 * SECTOR_SIZE];
        d.read(2, &mut buf).unwrap();
        assert_eq!(buf[0], 0xfe, "the first byte of what the read returns");
        assert!(buf[1..].iter().all(|&b| b == 1));
        d.read(0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 1), "a read that does not cover it");
        assert_eq!(d.inner().bytes()[2 * SECTOR_SIZE], 1, "the media is intact");
        d.arm(Fault::flip(Access::Write));
        d.write(6, &[7u8; SECTOR_SIZE], false).unwrap();
        d.disarm();
        d.read(6, &mut buf[..SECTOR_SIZE]).unwrap();
        assert_eq!((buf[0], buf[1]), (!7, 7), "the write stored a flipped byte");
        assert_eq!(d.injected(), 2);
    }
}
