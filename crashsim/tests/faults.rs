//! Every fault switch, one test each.

use crashsim::{
    BitFlip, BitRot, Choice, CrashPoint, DeviceConfig, Event, Faults, Misdirect, Others,
    SharedWorld, SimDevice, TornFill, Units, World,
};
use engine::{Access, BlockDevice, DeviceRole};

const S: usize = 512;

fn world_with(faults: Faults) -> (SharedWorld, SimDevice) {
    let mut w = World::new();
    w.add_device(
        DeviceRole::Cache,
        DeviceConfig::from_image(vec![0xaa; 16 * S]).with_faults(faults),
    )
    .unwrap();
    let w = w.shared();
    let dev = SimDevice::new(&w, DeviceRole::Cache).unwrap();
    (w, dev)
}

fn sector(img: &crashsim::Image, s: usize) -> &[u8] {
    img.sector(s as u64)
}

#[test]
fn lying_flush_loses_data_in_a_crash() {
    let (w, mut dev) = world_with(Faults {
        lie_about_flush: true,
        ..Faults::default()
    });
    dev.write(0, &[1; S], false).unwrap();
    dev.flush().unwrap();
    let w = w.borrow();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    assert_eq!(state.pending_count(), 1, "the flush made nothing durable");
    let img = state.image(&Choice::none()).unwrap();
    assert_eq!(sector(img.get(DeviceRole::Cache).unwrap(), 0), &[0xaa; S]);
    assert!(w.format_log().contains("cache F (lied)"));
}

#[test]
fn lying_fua_is_a_plain_write() {
    let (w, mut dev) = world_with(Faults {
        lie_about_fua: true,
        ..Faults::default()
    });
    dev.write(0, &[1; S], true).unwrap();
    let w = w.borrow();
    assert_eq!(w.pending_writes(DeviceRole::Cache).unwrap().len(), 1);
    assert_eq!(
        sector(w.durable_image(DeviceRole::Cache).unwrap(), 0),
        &[0xaa; S]
    );
    assert!(w.format_log().contains("(fua ignored)"));
}

#[test]
fn eio_at_chosen_operations() {
    let (w, mut dev) = world_with(Faults {
        read_eio_at: [1].into(),
        write_eio_at: [0].into(),
        flush_eio_at: [0].into(),
        ..Faults::default()
    });
    let e = dev.write(0, &[1; S], false).unwrap_err();
    assert_eq!(e.op, Access::Write);
    dev.write(0, &[2; S], false).unwrap();
    let mut buf = [0u8; S];
    dev.read(0, &mut buf).unwrap();
    assert_eq!(buf, [2; S], "the failed write changed nothing");
    assert_eq!(dev.read(0, &mut buf).unwrap_err().op, Access::Read);
    assert_eq!(dev.flush().unwrap_err().op, Access::Flush);
    dev.flush().unwrap();
    let w = w.borrow();
    // The failed flush made nothing durable; the second did.
    let before_second = w.crash_state(CrashPoint::before(4)).unwrap();
    assert_eq!(before_second.pending_count(), 1);
    assert_eq!(
        w.crash_state(CrashPoint::end(&w)).unwrap().pending_count(),
        0
    );
    assert_eq!(
        w.format_log()
            .lines()
            .filter(|l| l.contains(" EIO ("))
            .count(),
        3
    );
}

#[test]
fn latent_sector_errors_fail_reads_until_rewritten() {
    let (_w, mut dev) = world_with(Faults {
        latent_sectors: [5].into(),
        ..Faults::default()
    });
    let mut buf = vec![0u8; 4 * S];
    assert!(dev.read(3, &mut buf).is_err());
    dev.read(0, &mut buf).unwrap();
    dev.write(5, &[1; S], false).unwrap();
    dev.read(3, &mut buf).unwrap();
}

#[test]
fn misdirected_write_lands_elsewhere() {
    let (w, mut dev) = world_with(Faults {
        misdirect: Some(Misdirect {
            nth_write: 1,
            to_sector: 9,
        }),
        ..Faults::default()
    });
    dev.write(0, &[1; S], false).unwrap();
    dev.write(2, &[2; 2 * S], false).unwrap();
    let mut buf = [0u8; S];
    dev.read(2, &mut buf).unwrap();
    assert_eq!(buf, [0xaa; S]);
    dev.read(10, &mut buf).unwrap();
    assert_eq!(buf, [2; S]);
    dev.flush().unwrap();
    let w = w.borrow();
    assert_eq!(
        sector(w.durable_image(DeviceRole::Cache).unwrap(), 9),
        &[2; S]
    );
    assert!(w.format_log().contains("W 2+2 crc="));
    assert!(w.format_log().contains("MISDIRECTED to 9"));
}

#[test]
fn bit_rot_at_an_operation_and_in_a_crash_image() {
    let (w, mut dev) = world_with(Faults {
        bit_rot: vec![BitRot {
            before_op: 1,
            byte: 3,
            bit: 0,
        }],
        ..Faults::default()
    });
    let mut buf = [0u8; S];
    dev.read(0, &mut buf).unwrap();
    assert_eq!(buf[3], 0xaa);
    dev.read(0, &mut buf).unwrap();
    assert_eq!(buf[3], 0xab, "rotted before the second read");
    let w = w.borrow();
    assert!(matches!(w.log()[1].event, Event::BitRot { byte: 3, .. }));
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    assert_eq!(
        state.devices[0].durable[3], 0xab,
        "the replayer applies rot too"
    );
    let flip = Choice {
        persisted: vec![],
        bit_flips: vec![BitFlip {
            role: DeviceRole::Cache,
            byte: 100,
            bit: 7,
        }],
    };
    assert_eq!(
        state.image(&flip).unwrap().get(DeviceRole::Cache).unwrap()[100],
        0x2a
    );
    let outside = Choice {
        persisted: vec![],
        bit_flips: vec![BitFlip {
            role: DeviceRole::Plog,
            byte: 0,
            bit: 0,
        }],
    };
    assert!(state.image(&outside).is_err());
}

#[test]
fn harness_bit_rot_is_shadowed_by_a_pending_write() {
    let (w, mut dev) = world_with(Faults::default());
    dev.write(0, &[1; S], false).unwrap();
    w.borrow_mut().rot_bit(DeviceRole::Cache, 0, 1).unwrap();
    w.borrow_mut()
        .rot_bit(DeviceRole::Cache, S as u64, 1)
        .unwrap();
    let mut buf = [0u8; 2 * S];
    dev.read(0, &mut buf).unwrap();
    assert_eq!(buf[0], 1, "the pending write hides the rotted durable byte");
    assert_eq!(buf[S], 0xa8);
    assert!(w
        .borrow_mut()
        .rot_bit(DeviceRole::Cache, 1 << 40, 0)
        .is_err());
}

#[test]
fn garbage_in_torn_units() {
    let (w, mut dev) = world_with(Faults {
        torn_fill: TornFill::Garbage,
        ..Faults::default()
    });
    dev.write(0, &[1; 4 * S], false).unwrap();
    let w = w.borrow();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    let tears = state.tears_of(0, Others::Lost).unwrap();
    assert!(tears
        .iter()
        .any(|c| c.persisted[0].units == Units::Mask(vec![false; 4])));
    let c: Choice = "0:1010".parse().unwrap();
    let img = state.image(&c).unwrap();
    let cache = img.get(DeviceRole::Cache).unwrap();
    assert_eq!(sector(cache, 0), &[1; S]);
    assert_eq!(sector(cache, 2), &[1; S]);
    for s in [1, 3] {
        assert_ne!(sector(cache, s), &[1; S]);
        assert_ne!(sector(cache, s), &[0xaa; S]);
    }
    assert_ne!(
        sector(cache, 1),
        sector(cache, 3),
        "garbage differs per sector"
    );
    assert_eq!(state.image(&c).unwrap(), img, "garbage is deterministic");
    // Sectors the write did not cover keep their content.
    assert_eq!(sector(cache, 4), &[0xaa; S]);
}

#[test]
fn zeros_in_torn_units_and_tears_in_runs() {
    let (w, mut dev) = world_with(Faults {
        torn_fill: TornFill::Zero,
        torn_in_runs: true,
        ..Faults::default()
    });
    dev.write(0, &[1; 4 * S], false).unwrap();
    let w = w.borrow();
    let state = w.crash_state(CrashPoint::end(&w)).unwrap();
    let tears = state.tears_of(0, Others::Lost).unwrap();
    let masks: Vec<&Units> = tears.iter().map(|c| &c.persisted[0].units).collect();
    assert!(masks.contains(&&Units::Mask(vec![false; 4])), "all zeroed");
    assert!(
        !masks.contains(&&Units::Mask(vec![true, false, true, true])),
        "two runs"
    );
    let c: Choice = "0:0110".parse().unwrap();
    let img = state.image(&c).unwrap();
    let cache = img.get(DeviceRole::Cache).unwrap();
    for (s, want) in [
        (0, [0; S]),
        (1, [1; S]),
        (2, [1; S]),
        (3, [0; S]),
        (4, [0xaa; S]),
    ] {
        assert_eq!(sector(cache, s), &want, "sector {s}");
    }
    // Random tears draw one run of units.
    for c in state.random_choices(7, 200) {
        if let Some(Units::Mask(m)) = c.persisted.first().map(|p| &p.units) {
            let starts = (0..4).filter(|&i| m[i] && (i == 0 || !m[i - 1])).count();
            assert_eq!(starts, 1, "{m:?}");
        }
    }
}

#[test]
fn bad_fault_configurations_are_refused() {
    let mut w = World::new();
    let bad = Faults {
        latent_sectors: [100].into(),
        ..Faults::default()
    };
    assert!(w
        .add_device(DeviceRole::Cache, DeviceConfig::zeroed(8).with_faults(bad))
        .is_err());
    assert!(w
        .add_device(DeviceRole::Cache, DeviceConfig::from_image(vec![0; 100]))
        .is_err());
    w.add_device(DeviceRole::Cache, DeviceConfig::zeroed(8))
        .unwrap();
    assert!(w
        .add_device(DeviceRole::Cache, DeviceConfig::zeroed(8))
        .is_err());
    let bad = Faults {
        misdirect: Some(Misdirect {
            nth_write: 0,
            to_sector: 8,
        }),
        ..Faults::default()
    };
    assert!(w.set_faults(DeviceRole::Cache, bad).is_err());
}
