//! A device error kills the cache: the error is returned, status says why, and from then on
//! every request fails instead of returning data that might be wrong.

use std::cell::Cell;
use std::rc::Rc;

use engine::{Access, BlockDevice, Config, Error, IoError, MemDevice, Step, SyncEngine};

/// A MemDevice whose operations of kind `fail` fail while the shared switch is on.
struct Failing {
    inner: MemDevice,
    fail: Access,
    armed: Rc<Cell<bool>>,
}

impl Failing {
    fn check(&self, op: Access, sector: u64) -> Result<(), IoError> {
        if op == self.fail && self.armed.get() {
            return Err(IoError::new(op, sector, 1, "injected EIO"));
        }
        Ok(())
    }
}

impl BlockDevice for Failing {
    fn size_sectors(&self) -> u64 {
        self.inner.size_sectors()
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check(Access::Read, sector)?;
        self.inner.read(sector, buf)
    }
    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        self.check(Access::Write, sector)?;
        self.inner.write(sector, data, fua)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.check(Access::Flush, 0)?;
        self.inner.flush()
    }
}

/// An engine whose cache device fails `cache_op` and backing device fails `backing_op` once
/// the returned switches are turned on.
fn open(
    cache_op: Access,
    backing_op: Access,
) -> (SyncEngine<Failing>, Rc<Cell<bool>>, Rc<Cell<bool>>) {
    let (c_arm, b_arm) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
    let cache = Failing {
        inner: MemDevice::new(2048 + 4 * 16),
        fail: cache_op,
        armed: c_arm.clone(),
    };
    let backing = Failing {
        inner: MemDevice::new(64),
        fail: backing_op,
        armed: b_arm.clone(),
    };
    let cfg = Config {
        segment_size_order: 4,
        nr_rambuf_pool: 1,
        ..Config::default()
    };
    (
        SyncEngine::open(cache, backing, cfg).unwrap().0,
        c_arm,
        b_arm,
    )
}

fn assert_dead_and_refusing(e: &mut SyncEngine<Failing>) {
    let st = e.status();
    assert!(
        st.dead
            .as_deref()
            .is_some_and(|d| d.contains("injected EIO")),
        "{:?}",
        st.dead
    );
    let mut buf = [0u8; 4096];
    assert!(
        matches!(e.read(0, &mut buf), Err(Error::Dead { .. })),
        "reads refuse, never guess"
    );
    assert!(matches!(e.write(0, &buf, false), Err(Error::Dead { .. })));
    assert!(matches!(e.flush(), Err(Error::Dead { .. })));
    assert!(matches!(
        e.run_step(Step::Writeback),
        Err(Error::Dead { .. })
    ));
    assert_eq!(e.next_step(), None, "a dead cache schedules nothing");
}

#[test]
fn a_failed_cache_flush_fails_the_client_flush_and_kills_the_cache() {
    let (mut e, c_arm, _) = open(Access::Flush, Access::Flush);
    e.write(0, &[1u8; 4096], false).unwrap();
    c_arm.set(true);
    let err = e.flush().unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }),
        "the FLUSH reports the device error: {err}"
    );
    assert_dead_and_refusing(&mut e);
}

#[test]
fn a_failed_segment_write_kills_the_cache() {
    let (mut e, c_arm, _) = open(Access::Write, Access::Write);
    e.write(0, &[1u8; 4096], false).unwrap();
    c_arm.set(true);
    assert!(
        matches!(e.write(8, &[2u8; 512], true), Err(Error::Io { .. })),
        "FUA needs the segment written"
    );
    assert_dead_and_refusing(&mut e);
}

#[test]
fn a_failed_backing_read_is_an_error_not_data() {
    let (mut e, _, b_arm) = open(Access::Write, Access::Read);
    b_arm.set(true);
    let mut buf = [0u8; 512];
    assert!(matches!(e.read(40, &mut buf), Err(Error::Io { .. })));
    assert_dead_and_refusing(&mut e);
}

#[test]
fn a_failed_writeback_keeps_the_data_in_the_log() {
    let (mut e, _, b_arm) = open(Access::Write, Access::Write);
    e.write(0, &[9u8; 4096], false).unwrap();
    e.flush().unwrap();
    b_arm.set(true);
    assert!(matches!(e.run_step(Step::Writeback), Err(Error::Io { .. })));
    assert_dead_and_refusing(&mut e);
    // Reopening replays the log: the data is still there.
    let (c, b) = e.into_devices();
    b.armed.set(false);
    let cfg = Config {
        segment_size_order: 4,
        nr_rambuf_pool: 1,
        ..Config::default()
    };
    let (mut e, rep) = SyncEngine::open(c, b, cfg).unwrap();
    assert_eq!(rep.segments_applied, 1);
    let mut buf = [0u8; 4096];
    e.read(0, &mut buf).unwrap();
    assert_eq!(buf, [9u8; 4096]);
}
