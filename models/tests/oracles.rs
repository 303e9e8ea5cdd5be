//! The oracles accept what a correct device may hold after a crash and reject the rest.

use models::{
    check_block, check_crash_state, check_prefix, History, OpCut, OpId, Oracle, Origin, PrefixUnit,
    Violation,
};

const S: usize = 512;

/// A sector whose bytes say which write (`tag`) and which sector produced them.
fn sector_data(tag: u8, sector: u64) -> Vec<u8> {
    let mut v = vec![tag; S];
    v[0] = sector as u8;
    v
}

/// `sectors` sectors of data for a write tagged `tag` starting at `sector`.
fn data(tag: u8, sector: u64, sectors: u64) -> Vec<u8> {
    (sector..sector + sectors)
        .flat_map(|s| sector_data(tag, s))
        .collect()
}

/// A device image: `initial` with sectors replaced.
fn image(h: &History, sectors: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut img = h.initial().to_vec();
    for (s, bytes) in sectors {
        let at = *s as usize * S;
        img[at..at + bytes.len()].copy_from_slice(bytes);
    }
    img
}

fn both(h: &History, img: &[u8]) -> (Result<(), Violation>, Result<(), Violation>) {
    (
        check_block(h, img),
        check_prefix(h, img, PrefixUnit::Blocks),
    )
}

#[test]
fn durable_state_and_later_values_are_accepted() {
    let mut h = History::zeroed(16);
    h.write(0, &data(1, 0, 1), false).unwrap();
    h.flush().unwrap();
    h.write(0, &data(2, 0, 1), false).unwrap();
    let w3 = h.begin_write(0, &data(3, 0, 1), false).unwrap();
    // Durable value, the acknowledged later one, and the in-flight one: all fine.
    for tag in [1, 2, 3] {
        let img = image(&h, &[(0, data(tag, 0, 1))]);
        assert_eq!(both(&h, &img), (Ok(()), Ok(())), "tag {tag}");
    }
    h.complete(w3).unwrap();
    assert_eq!(
        check_crash_state(&h, &image(&h, &[(0, data(2, 0, 1))]), PrefixUnit::Blocks),
        Ok(())
    );
}

#[test]
fn a_value_older_than_the_durable_one_is_rejected() {
    let mut h = History::zeroed(16);
    let old = h.write(3, &data(1, 3, 1), false).unwrap();
    h.write(3, &data(2, 3, 1), false).unwrap();
    h.flush().unwrap();
    h.write(3, &data(4, 3, 1), false).unwrap();
    let img = image(&h, &[(3, data(1, 3, 1))]);
    let (block, prefix) = both(&h, &img);
    let v = block.unwrap_err();
    assert_eq!(v.oracle(), Oracle::Block);
    assert_eq!(v.sector(), Some(3));
    assert_eq!(v.origin(), Some(Origin::Write(old)));
    assert!(v.to_string().contains("durable value (op#1)"), "{v}");
    assert_eq!(prefix.unwrap_err().sector(), Some(3));
    // The initial content is older still.
    let (block, prefix) = both(&h, h.initial());
    assert_eq!(block.unwrap_err().origin(), Some(Origin::Initial));
    assert!(prefix.is_err());
}

#[test]
fn garbage_is_rejected() {
    let mut h = History::zeroed(8);
    h.write(0, &data(1, 0, 2), false).unwrap();
    let img = image(&h, &[(1, vec![0xee; S])]);
    let (block, prefix) = both(&h, &img);
    let v = block.unwrap_err();
    assert_eq!(v.origin(), Some(Origin::Unknown));
    assert_eq!(v.sector(), Some(1));
    assert!(v.to_string().contains("ee×512"), "{v}");
    assert_eq!(prefix.unwrap_err().origin(), Some(Origin::Unknown));
}

#[test]
fn another_sectors_data_is_rejected() {
    let mut h = History::zeroed(8);
    let w = h.write(0, &data(1, 0, 2), false).unwrap();
    // Sector 0 holds what the write meant for sector 1 (a misdirected or shifted write).
    let img = image(&h, &[(0, sector_data(1, 1)), (1, sector_data(1, 1))]);
    let v = check_block(&h, &img).unwrap_err();
    assert_eq!(v.sector(), Some(0));
    assert_eq!(v.origin(), Some(Origin::WriteToSector { op: w, sector: 1 }));
    assert!(check_prefix(&h, &img, PrefixUnit::Blocks).is_err());
}

#[test]
fn per_sector_fine_but_no_prefix_is_caught_by_the_prefix_oracle_only() {
    let mut h = History::zeroed(8);
    h.write(0, &data(1, 0, 1), false).unwrap();
    h.write(1, &data(2, 1, 1), false).unwrap();
    // B persisted, A (submitted earlier) did not, nothing durable.
    let img = image(&h, &[(1, data(2, 1, 1))]);
    let (block, prefix) = both(&h, &img);
    assert_eq!(block, Ok(()));
    let v = prefix.unwrap_err();
    assert_eq!(v.oracle(), Oracle::Prefix);
    assert_eq!(v.sector(), Some(1));
    assert!(v.to_string().contains("length 0 "), "{v}");
    // The states that are prefixes pass.
    for img in [
        image(&h, &[]),
        image(&h, &[(0, data(1, 0, 1))]),
        image(&h, &[(0, data(1, 0, 1)), (1, data(2, 1, 1))]),
    ] {
        assert_eq!(both(&h, &img), (Ok(()), Ok(())));
    }
}

#[test]
fn a_missing_durable_write_after_flush_is_rejected() {
    let mut h = History::zeroed(8);
    h.write(2, &data(1, 2, 2), false).unwrap();
    let f = h.begin_flush().unwrap();
    // FLUSH in flight: losing the write is fine.
    assert_eq!(both(&h, h.initial()), (Ok(()), Ok(())));
    h.complete(f).unwrap();
    let (block, prefix) = both(&h, h.initial());
    assert_eq!(block.unwrap_err().sector(), Some(2));
    let v = prefix.unwrap_err();
    assert!(v.to_string().contains("need at least 1"), "{v}");
    // Half of it is still missing.
    let img = image(&h, &[(2, sector_data(1, 2))]);
    assert_eq!(check_block(&h, &img).unwrap_err().sector(), Some(3));
}

#[test]
fn a_missing_fua_write_is_rejected() {
    let mut h = History::zeroed(8);
    h.write(0, &data(1, 0, 1), false).unwrap();
    let fua = h.begin_write(5, &data(2, 5, 1), true).unwrap();
    // In flight: may be missing.
    assert_eq!(both(&h, h.initial()), (Ok(()), Ok(())));
    h.complete(fua).unwrap();
    let (block, prefix) = both(&h, h.initial());
    assert_eq!(block.unwrap_err().sector(), Some(5));
    assert!(prefix.is_err());
    // The FUA write alone persisting is no prefix (the earlier write to sector 0 is missing) ...
    let img = image(&h, &[(5, data(2, 5, 1))]);
    assert_eq!(check_block(&h, &img), Ok(()));
    assert!(check_prefix(&h, &img, PrefixUnit::Blocks).is_err());
    // ... with it, it is.
    let img = image(&h, &[(0, data(1, 0, 1)), (5, data(2, 5, 1))]);
    assert_eq!(both(&h, &img), (Ok(()), Ok(())));
}

#[test]
fn torn_multi_block_write_is_a_prefix_of_pieces_only_in_address_order() {
    let mut h = History::zeroed(32);
    h.begin_write(0, &data(1, 0, 16), false).unwrap();
    let first_block = image(&h, &[(0, data(1, 0, 8))]);
    assert_eq!(both(&h, &first_block), (Ok(()), Ok(())));
    assert!(check_prefix(&h, &first_block, PrefixUnit::Requests).is_err());
    let second_block = image(&h, &[(8, data(1, 8, 8))]);
    assert_eq!(check_block(&h, &second_block), Ok(()));
    assert!(check_prefix(&h, &second_block, PrefixUnit::Blocks).is_err());
    let whole = image(&h, &[(0, data(1, 0, 16))]);
    assert_eq!(check_prefix(&h, &whole, PrefixUnit::Requests), Ok(()));
}

#[test]
fn prefix_must_be_consistent_across_sectors() {
    let mut h = History::zeroed(8);
    h.write(0, &data(1, 0, 1), false).unwrap();
    h.write(1, &data(2, 1, 1), false).unwrap();
    h.write(0, &data(3, 0, 1), false).unwrap();
    // C on sector 0 implies B on sector 1.
    let bad = image(&h, &[(0, data(3, 0, 1))]);
    assert_eq!(check_block(&h, &bad), Ok(()));
    assert_eq!(
        check_prefix(&h, &bad, PrefixUnit::Blocks)
            .unwrap_err()
            .sector(),
        Some(1)
    );
    let good = image(&h, &[(0, data(1, 0, 1))]);
    assert_eq!(both(&h, &good), (Ok(()), Ok(())));
}

#[test]
fn failed_writes_may_or_may_not_appear() {
    let mut h = History::zeroed(8);
    h.write(0, &data(1, 0, 1), false).unwrap();
    let w = h.begin_write(0, &data(2, 0, 1), false).unwrap();
    h.fail(w).unwrap();
    h.flush().unwrap();
    for tag in [1, 2] {
        let img = image(&h, &[(0, data(tag, 0, 1))]);
        assert_eq!(both(&h, &img), (Ok(()), Ok(())));
    }
    assert!(check_block(&h, h.initial()).is_err());
}

#[test]
fn as_of_and_restart_from() {
    let mut h = History::zeroed(8);
    h.write(0, &data(1, 0, 1), false).unwrap();
    h.flush().unwrap();
    h.write(0, &data(2, 0, 1), false).unwrap();
    // Crash while the FLUSH was in flight: the first write need not be there.
    let early = h
        .as_of(OpCut {
            begun: 2,
            last_ended: false,
        })
        .unwrap();
    assert_eq!(check_block(&early, early.initial()), Ok(()));
    assert!(check_block(&h, h.initial()).is_err());
    let recovered = image(&h, &[(0, data(2, 0, 1))]);
    let next = h.restart_from(recovered.clone()).unwrap();
    assert_eq!(next.ops().len(), 0);
    assert_eq!(check_block(&next, &recovered), Ok(()));
    assert!(check_block(&next, h.initial()).is_err());
    assert!(h.restart_from(vec![0; 3]).is_err());
    assert_eq!(h.op(OpId(0)).unwrap().write_range(), Some((0, 1)));
}

#[test]
fn wrong_size_is_reported() {
    let h = History::zeroed(8);
    assert!(matches!(
        check_block(&h, &[0; 512]),
        Err(Violation::SizeMismatch { .. })
    ));
    assert!(matches!(
        check_prefix(&h, &[0; 512], PrefixUnit::Requests),
        Err(Violation::SizeMismatch {
            oracle: Oracle::Prefix,
            ..
        })
    ));
}
