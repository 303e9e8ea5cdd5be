//! A device error kills the cache: the error is returned, status says why, and from then on
//! every request fails instead of returning data that might be wrong.

use engine::device::{Fault, Faulty};
use engine::{Access, Config, Error, MemDevice, Step, SyncEngine};

/// Devices that fail the chosen operations once a fault is armed on them
/// (`e.cache_device().arm(..)`).
type Failing = Faulty<MemDevice>;

/// An engine on a cache and a backing device that fail nothing yet.
fn open() -> SyncEngine<Failing> {
    let cache = Faulty::new(MemDevice::new(2048 + 4 * 16));
    let backing = Faulty::new(MemDevice::new(64));
    let cfg = Config {
        segment_size_order: 4,
        nr_rambuf_pool: 1,
        ..Config::default()
    };
    SyncEngine::open(cache, backing, cfg).unwrap().0
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
    let mut e = open();
    e.write(0, &[1u8; 4096], false).unwrap();
    e.cache_device().arm(Fault::fail(Access::Flush));
    let err = e.flush().unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }),
        "the FLUSH reports the device error: {err}"
    );
    assert_dead_and_refusing(&mut e);
}

#[test]
fn a_failed_segment_write_kills_the_cache() {
    let mut e = open();
    e.write(0, &[1u8; 4096], false).unwrap();
    e.cache_device().arm(Fault::fail(Access::Write));
    assert!(
        matches!(e.write(8, &[2u8; 512], true), Err(Error::Io { .. })),
        "FUA needs the segment written"
    );
    assert_dead_and_refusing(&mut e);
}

#[test]
fn a_failed_backing_read_is_an_error_not_data() {
    let mut e = open();
    e.backing_device().arm(Fault::fail(Access::Read));
    let mut buf = [0u8; 512];
    assert!(matches!(e.read(40, &mut buf), Err(Error::Io { .. })));
    assert_dead_and_refusing(&mut e);
}

#[test]
fn a_failed_writeback_keeps_the_data_in_the_log() {
    let mut e = open();
    e.write(0, &[9u8; 4096], false).unwrap();
    e.flush().unwrap();
    e.backing_device().arm(Fault::fail(Access::Write));
    assert!(matches!(e.run_step(Step::Writeback), Err(Error::Io { .. })));
    assert_dead_and_refusing(&mut e);
    // Reopening replays the log: the data is still there.
    let (c, b) = e.into_devices();
    b.disarm();
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
