//! The media model of the simulated devices: reads, flushes, FUA, crash images, tears.

use crashsim::{
    AtomicUnit, Choice, CrashPoint, DeviceConfig, Event, Others, Persist, SharedWorld, SimDevice,
    Units, World,
};
use engine::{BlockDevice, DeviceRole};

const S: usize = 512;

fn world_with(config: DeviceConfig) -> (SharedWorld, SimDevice) {
    let mut w = World::new();
    w.add_device(DeviceRole::Cache, config).unwrap();
    let w = w.shared();
    let dev = SimDevice::new(&w, DeviceRole::Cache).unwrap();
    (w, dev)
}

fn sector(img: &crashsim::Image, s: usize) -> &[u8] {
    img.sector(s as u64)
}

#[test]
fn reads_see_pending_writes_and_flush_makes_them_durable() {
    let (w, mut dev) = world_with(DeviceConfig::zeroed(16));
    dev.write(2, &[7; 2 * S], false).unwrap();
    let mut buf = vec![0; 2 * S];
    dev.read(2, &mut buf).unwrap();
    assert_eq!(buf, vec![7; 2 * S]);
    {
        let w = w.borrow();
        assert_eq!(
            w.durable_image(DeviceRole::Cache).unwrap(),
            &[0; 16 * S][..]
        );
        assert_eq!(w.pending_writes(DeviceRole::Cache).unwrap().len(), 1);
    }
    dev.flush().unwrap();
    let w = w.borrow();
    assert_eq!(
        sector(w.durable_image(DeviceRole::Cache).unwrap(), 3),
        &[7; S]
    );
    assert!(w.pending_writes(DeviceRole::Cache).unwrap().is_empty());
    assert_eq!(w.log().len(), 3);
    assert!(matches!(w.log()[2].event, Event::Flush { .. }));
}

#[test]
fn a_crash_with_nothing_persisted_gives_the_durable_image() {
    let (w, mut dev) = world_with(DeviceConfig::zeroed(8));
    dev.write(0, &[1; S], false).unwrap();
    dev.flush().unwrap();
    dev.write(0, &[2; S], false).unwrap();
    dev.write(1, &[3; S], false).unwrap();
    let w = w.borrow();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    assert_eq!(state.pending_count(), 2);
    let img = state.image(&Choice::none()).unwrap();
    let cache = img.get(DeviceRole::Cache).unwrap();
    assert_eq!(cache, w.durable_image(DeviceRole::Cache).unwrap());
    assert_eq!(sector(cache, 0), &[1; S]);
    assert_eq!(sector(cache, 1), &[0; S]);
    // Everything persisted: what reads saw.
    let all = state.image(&Choice::whole(0..2)).unwrap();
    assert_eq!(
        all.get(DeviceRole::Cache).unwrap(),
        w.current_image(DeviceRole::Cache).unwrap()
    );
}

#[test]
fn crash_points_before_and_after_an_operation() {
    let (w, mut dev) = world_with(DeviceConfig::zeroed(8));
    dev.write(0, &[1; S], false).unwrap(); // #0
    dev.flush().unwrap(); // #1
    let w = w.borrow();
    let before = w.crash_state(CrashPoint::before(1)).unwrap();
    let after = w.crash_state(CrashPoint::after(1)).unwrap();
    assert_eq!(before.pending_count(), 1);
    assert_eq!(after.pending_count(), 0);
    assert_eq!(sector(&after.devices[0].durable, 0), &[1; S]);
    assert_eq!(CrashPoint::after(0), CrashPoint::before(1));
    assert!(w.crash_state(CrashPoint::before(3)).is_err());
    let mut r = w.replayer();
    r.advance_to(CrashPoint::before(2)).unwrap();
    assert!(r.advance_to(CrashPoint::before(1)).is_err());
}

#[test]
fn fua_is_durable_and_not_overridden_by_an_older_pending_write() {
    let (w, mut dev) = world_with(DeviceConfig::zeroed(8));
    dev.write(0, &[1; 2 * S], false).unwrap();
    dev.write(1, &[2; S], true).unwrap();
    let w = w.borrow();
    assert_eq!(
        sector(w.durable_image(DeviceRole::Cache).unwrap(), 1),
        &[2; S]
    );
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    assert_eq!(state.pending_count(), 1);
    // The older write persisting cannot bring back its version of sector 1.
    let img = state.image(&Choice::whole([0])).unwrap();
    let cache = img.get(DeviceRole::Cache).unwrap();
    assert_eq!(sector(cache, 0), &[1; S]);
    assert_eq!(sector(cache, 1), &[2; S]);
}

#[test]
fn several_pending_versions_any_one_may_win() {
    let (w, mut dev) = world_with(DeviceConfig::zeroed(4));
    dev.write(0, &[1; S], false).unwrap();
    dev.write(0, &[2; S], false).unwrap();
    let w = w.borrow();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    let in_log_order = state.image(&Choice::whole([0, 1])).unwrap();
    assert_eq!(
        sector(in_log_order.get(DeviceRole::Cache).unwrap(), 0),
        &[2; S]
    );
    let older_wins = state.image(&Choice::whole([1, 0])).unwrap();
    assert_eq!(
        sector(older_wins.get(DeviceRole::Cache).unwrap(), 0),
        &[1; S]
    );
}

#[test]
fn tears_leave_each_sector_old_or_new() {
    let (w, mut dev) = world_with(DeviceConfig::from_image(vec![0xaa; 16 * S]));
    dev.write(3, &[0x55; 5 * S], false).unwrap();
    let w = w.borrow();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    assert_eq!(state.pending[0].unit_count(), 5);
    let tears = state.tears_of(0, Others::Lost).unwrap();
    // Only-unit-i and all-but-unit-i for 5 units, prefixes and suffixes, deduplicated.
    assert!(tears.len() >= 10, "{}", tears.len());
    for c in &tears {
        let Units::Mask(mask) = &c.persisted[0].units else {
            panic!("a tear has a mask")
        };
        let img = state.image(c).unwrap();
        let cache = img.get(DeviceRole::Cache).unwrap();
        for s in 0..16 {
            let expect = if (3..8).contains(&s) && mask[s - 3] {
                0x55
            } else {
                0xaa
            };
            assert_eq!(sector(cache, s), &[expect; S], "sector {s} with {c}");
        }
    }
}

#[test]
fn block_atomic_unit_tears_only_at_4k_boundaries() {
    let config = DeviceConfig::zeroed(32).with_atomic_unit(AtomicUnit::Block);
    let (w, mut dev) = world_with(config);
    // Sectors 4..20: units [4,8), [8,16), [16,20).
    dev.write(4, &[9; 16 * S], false).unwrap();
    let w = w.borrow();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    assert_eq!(state.pending[0].units(), vec![(4, 4), (8, 8), (16, 4)]);
    for c in state.tears_of(0, Others::Lost).unwrap() {
        let img = state.image(&c).unwrap();
        let cache = img.get(DeviceRole::Cache).unwrap();
        for block in [4..8, 8..16, 16..20] {
            let values: Vec<u8> = block.map(|s| cache[s * S]).collect();
            assert!(
                values.iter().all(|&v| v == values[0]),
                "unit torn inside: {values:?} with {c}"
            );
        }
    }
    let wrong = Choice {
        persisted: vec![Persist {
            pending: 0,
            units: Units::Mask(vec![true; 16]),
        }],
        bit_flips: vec![],
    };
    assert!(state.image(&wrong).is_err());
}

#[test]
fn tears_with_the_others_persisted() {
    let (w, mut dev) = world_with(DeviceConfig::zeroed(8));
    dev.write(0, &[1; 2 * S], false).unwrap();
    dev.write(4, &[2; S], false).unwrap();
    let w = w.borrow();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    for c in state.tears_of(0, Others::Persisted).unwrap() {
        let img = state.image(&c).unwrap();
        assert_eq!(sector(img.get(DeviceRole::Cache).unwrap(), 4), &[2; S]);
    }
    assert!(state.tears_of(1, Others::Lost).unwrap().is_empty());
    assert!(state.tears_of(2, Others::Lost).is_err());
}

#[test]
fn batches_are_logged_as_their_operations() {
    let (w, mut dev) = world_with(DeviceConfig::zeroed(8));
    let a = [1u8; S];
    let b = [2u8; S];
    dev.write_batch(&[
        engine::WriteReq {
            sector: 5,
            data: &a,
            fua: false,
        },
        engine::WriteReq {
            sector: 1,
            data: &b,
            fua: true,
        },
    ])
    .unwrap();
    let mut x = [0u8; S];
    let mut y = [0u8; S];
    dev.read_batch(&mut [
        engine::ReadReq {
            sector: 1,
            buf: &mut x,
        },
        engine::ReadReq {
            sector: 5,
            buf: &mut y,
        },
    ])
    .unwrap();
    assert_eq!((x, y), (b, a));
    let log = w.borrow().format_log();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("#0 cache W 5+1 crc="), "{log}");
    assert!(lines[1].starts_with("#1 cache W 1+1 fua"), "{log}");
    assert_eq!(lines[2], "#2 cache R 1+1");
    assert_eq!(lines[3], "#3 cache R 5+1");
}

#[test]
fn bad_accesses_fail_and_are_logged() {
    let (w, mut dev) = world_with(DeviceConfig::zeroed(4));
    assert!(dev.write(3, &[0; 2 * S], false).is_err());
    assert!(dev.read(0, &mut [0; 100]).is_err());
    let w = w.borrow();
    assert_eq!(w.log().len(), 2);
    assert!(w.pending_writes(DeviceRole::Cache).unwrap().is_empty());
    assert!(SimDevice::new(&w.clone().shared(), DeviceRole::Plog).is_err());
}

#[test]
fn restarted_world_holds_the_crash_images() {
    let (w, mut dev) = world_with(DeviceConfig::zeroed(4).with_atomic_unit(AtomicUnit::Block));
    dev.write(0, &[4; S], false).unwrap();
    let w = w.borrow();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    let images = state.image(&Choice::whole([0])).unwrap();
    let next = w.restarted(&images).unwrap();
    assert!(next.log().is_empty());
    assert_eq!(
        next.durable_image(DeviceRole::Cache).unwrap(),
        images.get(DeviceRole::Cache).unwrap()
    );
    assert_eq!(
        next.config(DeviceRole::Cache).unwrap().atomic_unit,
        AtomicUnit::Block
    );
}
