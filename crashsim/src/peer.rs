//! A model of the peer that reads our rings: dm-writeboost 2.2.17's replay (its algorithm, read
//! from `dm-writeboost-metadata.c`; no code of it here). Given a crashed cache image and backing
//! image, it says what the kernel module would show once it opened them, so every crash state
//! can also be judged by what the peer makes of it.
//!
//! The peer's replay, step by step:
//! 1. the largest header id over all slots (checksum not checked);
//! 2. from the slot after it, once round the ring: skip id 0, stop at the first checksum
//!    mismatch, apply every other segment's metablocks in order. A metablock whose block is
//!    already mapped replaces the older copy; if the older copy is dirty and the new one is not
//!    fully dirty (bits neither 0 nor 255), the older copy's dirty sectors are first written to
//!    the backing device;
//! 3. the segments from (last applied id − n, record] are marked clean;
//! 4. reads see the dirty sectors of the mapped copies over the backing device.
//!
//! The peer does not check that a slot holds the id its position implies, so it applies a stale
//! slot (a lost newer write) in ring order (seed hazard H2), and it stops for good at the first
//! torn slot, newer segments after it or not (H1). Its own rings meet those rarely (it writes
//! segments one at a time with FUA); ours may, after a power cut with segment writes in flight
//! or unflushed. So the model judges only *orderly* rings ([`orderly`]); any other ring must be
//! opened by wbcache first (docs/DESIGN.md, "The peer's replay").

use std::collections::HashMap;

use engine::format::{self, Geometry, BLOCK_SIZE, SECTORS_PER_BLOCK, SECTOR_SIZE};

use crate::Image;

/// One slot's header as the peer reads it.
#[derive(Clone, Copy, Debug)]
struct Slot {
    id: u64,
    intact: bool,
}

/// A block mapped after replay: where its copy is and which sectors are dirty.
#[derive(Clone, Copy, Debug)]
struct Mapped {
    slot: u64,
    pos: usize,
    bits: u8,
    dirty: bool,
}

fn slot_bytes(cache: &Image, geo: &Geometry, slot: u64) -> Vec<u8> {
    let mut buf = vec![0u8; geo.segment_bytes()];
    cache.read(geo.slot_sector(slot) as usize * SECTOR_SIZE, &mut buf);
    buf
}

fn read_slots(cache: &Image, geo: &Geometry) -> Vec<(Slot, Vec<u8>)> {
    (0..geo.nr_segments)
        .map(|k| {
            let seg = slot_bytes(cache, geo, k);
            let h = format::decode_segment_header(&seg);
            let intact =
                format::segment_checksum_ok(&seg) && h.length as usize <= geo.blocks_per_segment();
            (Slot { id: h.id, intact }, seg)
        })
        .collect()
}

/// Whether every slot holds the newest id its position can hold, intact, or nothing (id 0) when
/// no id that new exists yet: a ring the peer replays as we do.
/// Elsewhere its replay goes wrong by design: it stops for good at a torn slot (seed hazard
/// H1) and applies a stale one in ring order (H2).
fn orderly(slots: &[(Slot, Vec<u8>)], geo: &Geometry) -> bool {
    let max_id = slots.iter().map(|(s, _)| s.id).max().unwrap_or(0);
    slots.iter().enumerate().all(|(k, (s, _))| {
        let k = k as u64;
        // The newest id <= max_id that lives in slot k.
        if max_id < k + 1 {
            return s.id == 0;
        }
        let expect = max_id - (max_id - 1 - k) % geo.nr_segments;
        // Not even a torn newest slot: it may be an older segment torn by the write reusing
        // its slot, which the peer's replay then forgets with everything after it (H1).
        s.id == expect && s.intact
    })
}

/// What the peer shows after replaying `cache` over `backing`, or `None` when the images are
/// not an orderly, formatted type-0 ring the model judges.
pub fn peer_view(cache: &Image, backing: &Image, order: u8) -> Option<Vec<u8>> {
    let mut sb = [0u8; SECTOR_SIZE];
    cache.read(0, &mut sb);
    let format::Superblock::Valid(Some(ext)) = format::decode_superblock(&sb) else {
        return None;
    };
    if ext.cache_type != 0 || ext.order != order {
        return None;
    }
    let mut rec = [0u8; SECTOR_SIZE];
    cache.read(format::RECORD_SECTOR as usize * SECTOR_SIZE, &mut rec);
    // The peer reads the primary record unchecked: a torn write that garbled it (the
    // garbage-torn fault) misleads its replay whatever the cache did, so such a state is not
    // the peer's to judge (ours takes the backup copy).
    let ext = format::decode_record_ext(&rec)?;
    if ext.flags & format::RECORD_FLAG_FORMATTING != 0 {
        return None;
    }
    let geo = Geometry::new(order, (cache.len() / SECTOR_SIZE) as u64).ok()?;
    let slots = read_slots(cache, &geo);
    if !orderly(&slots, &geo) {
        return None;
    }
    if std::env::var_os("PEER_DEBUG").is_some() {
        for (s, seg) in &slots {
            let h = format::decode_segment_header(seg);
            let mbs: Vec<_> = (0..h.length as usize)
                .map(|j| format::decode_metablock(seg, j))
                .collect();
            eprintln!("peer slot id {} intact {} mbs {:?}", s.id, s.intact, mbs);
        }
        eprintln!(
            "peer record {} ext {:?}",
            format::decode_record(&rec),
            format::decode_record_ext(&rec)
        );
    }
    let mut out = backing.to_vec();
    let mapped = replay(&slots, &geo, cache, &mut out, format::decode_record(&rec));
    overlay(&mapped, &geo, cache, &mut out);
    Some(out)
}

/// Steps 1–3: applies the ring and marks the recorded segments clean; merge writes land in
/// `backing`.
fn replay(
    slots: &[(Slot, Vec<u8>)],
    geo: &Geometry,
    cache: &Image,
    backing: &mut [u8],
    record: u64,
) -> HashMap<u64, Mapped> {
    let n = geo.nr_segments;
    let max_id = slots.iter().map(|(s, _)| s.id).max().unwrap_or(0);
    let mut map: HashMap<u64, Mapped> = HashMap::new();
    if max_id == 0 {
        return map;
    }
    let start = geo.slot_of(max_id.saturating_add(1));
    let mut last_applied = 0;
    for i in 0..n {
        let k = (start + i) % n;
        let (s, seg) = &slots[k as usize];
        if s.id == 0 {
            continue;
        }
        if !s.intact {
            break;
        }
        let length = format::decode_segment_header(seg).length as usize;
        for pos in 0..length {
            apply_metablock(&mut map, geo, cache, backing, k, pos, seg);
        }
        last_applied = s.id;
    }
    let inferred = last_applied.saturating_sub(n);
    // Bounded: n consecutive ids already name every slot, and a garbage record may be huge.
    for id in (inferred + 1..=record).take(n as usize) {
        let slot = geo.slot_of(id);
        map.values_mut()
            .filter(|m| m.slot == slot)
            .for_each(|m| m.dirty = false);
    }
    map
}

fn apply_metablock(
    map: &mut HashMap<u64, Mapped>,
    geo: &Geometry,
    cache: &Image,
    backing: &mut [u8],
    slot: u64,
    pos: usize,
    seg: &[u8],
) {
    let mb = format::decode_metablock(seg, pos);
    let block = mb.sector / SECTORS_PER_BLOCK;
    let new_bits = if mb.dirty_bits == 0 {
        0xFF
    } else {
        mb.dirty_bits
    };
    if let Some(old) = map.remove(&block) {
        if old.dirty && new_bits != 0xFF {
            write_sectors(geo, cache, backing, block, &old);
        }
    }
    map.insert(
        block,
        Mapped {
            slot,
            pos,
            bits: new_bits,
            dirty: mb.dirty_bits != 0,
        },
    );
}

/// Writes `m`'s dirty sectors of `block` from the cache image into `out`.
fn write_sectors(geo: &Geometry, cache: &Image, out: &mut [u8], block: u64, m: &Mapped) {
    let mut data = [0u8; BLOCK_SIZE];
    cache.read(
        geo.block_sector(m.slot, m.pos) as usize * SECTOR_SIZE,
        &mut data,
    );
    let base = (block * SECTORS_PER_BLOCK) as usize * SECTOR_SIZE;
    for i in 0..SECTORS_PER_BLOCK as usize {
        let at = base + i * SECTOR_SIZE;
        if m.bits & (1 << i) != 0 && at + SECTOR_SIZE <= out.len() {
            out[at..at + SECTOR_SIZE].copy_from_slice(&data[i * SECTOR_SIZE..][..SECTOR_SIZE]);
        }
    }
}

/// Step 4: the dirty copies over the backing device.
fn overlay(map: &HashMap<u64, Mapped>, geo: &Geometry, cache: &Image, out: &mut [u8]) {
    for (&block, m) in map {
        if m.dirty {
            write_sectors(geo, cache, out, block, m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::format::{build_segment, Metablock, SUPERBLOCK_SECTORS};

    const ORDER: u8 = 4; // 1 data block a segment
    const NR: u64 = 4;

    fn formatted() -> Image {
        let len = (SUPERBLOCK_SECTORS + (NR << ORDER)) as usize * SECTOR_SIZE;
        let mut cache = Image::zeroed(len);
        let sb = format::encode_superblock(&format::SuperblockExt {
            format_version: format::FORMAT_VERSION,
            order: ORDER,
            cache_type: 0,
            flags: 0,
            generation: 1,
            cache_sectors: len as u64 / SECTOR_SIZE as u64,
        });
        cache.write(0, &sb);
        record(&mut cache, 0);
        cache
    }

    fn put_segment(cache: &mut Image, id: u64, block: u64, bits: u8, fill: u8) {
        let geo = Geometry::new(ORDER, (cache.len() / SECTOR_SIZE) as u64).unwrap();
        let mb = Metablock {
            sector: block * SECTORS_PER_BLOCK,
            dirty_bits: bits,
            block_crc: None,
        };
        let seg = build_segment(id, &[(mb, [fill; BLOCK_SIZE])]);
        cache.write(
            geo.slot_sector(geo.slot_of(id)) as usize * SECTOR_SIZE,
            &seg,
        );
    }

    /// The record as the engine writes it (with its checked extension, which the peer ignores).
    fn record(cache: &mut Image, id: u64) {
        let block = format::encode_record_block(&format::RecordExt {
            last_writeback_id: id,
            flags: 0,
            generation: 1,
        });
        cache.write(format::RECORD_BLOCK_SECTOR as usize * SECTOR_SIZE, &block);
    }

    fn sector(view: &[u8], s: usize) -> u8 {
        view[s * SECTOR_SIZE]
    }

    #[test]
    fn a_recorded_partial_copy_over_an_older_dirty_one_loses_its_newer_sectors() {
        // Segment 1: block 0 sectors 0 and 7 (data 0xA1). Segment 2: the merged newer copy,
        // sectors 0, 1, 7 (data 0xB2). Both written back: backing holds 0xB2 there.
        let mut cache = formatted();
        put_segment(&mut cache, 1, 0, 0b1000_0001, 0xA1);
        put_segment(&mut cache, 2, 0, 0b1000_0011, 0xB2);
        let mut backing = Image::zeroed(8 * BLOCK_SIZE);
        backing.write(0, &[0xB2; BLOCK_SIZE]);
        record(&mut cache, 2);
        let view = peer_view(&cache, &backing, ORDER).expect("orderly");
        // The peer wrote segment 1's sectors back over the newer ones and then marked
        // segment 2 clean: sector 0 and 7 hold the older data.
        assert_eq!(sector(&view, 0), 0xA1);
        assert_eq!(sector(&view, 1), 0xB2);
        assert_eq!(sector(&view, 7), 0xA1);
        // With the record behind segment 2, segment 2 stays dirty and wins.
        record(&mut cache, 1);
        let view = peer_view(&cache, &backing, ORDER).expect("orderly");
        assert_eq!(sector(&view, 0), 0xB2);
        assert_eq!(sector(&view, 7), 0xB2);
    }

    #[test]
    fn a_full_copy_replaces_an_older_one_without_writing_it_back() {
        let mut cache = formatted();
        put_segment(&mut cache, 1, 0, 0b0000_0001, 0xA1);
        put_segment(&mut cache, 2, 0, 0xFF, 0xB2);
        let mut backing = Image::zeroed(8 * BLOCK_SIZE);
        backing.write(0, &[0xB2; BLOCK_SIZE]);
        record(&mut cache, 2);
        let view = peer_view(&cache, &backing, ORDER).expect("orderly");
        assert!(view[..BLOCK_SIZE].iter().all(|&b| b == 0xB2));
    }

    /// A primary record a torn write garbled is not the peer's to judge: it would trust it.
    #[test]
    fn a_garbled_primary_record_is_not_judged() {
        let mut cache = formatted();
        put_segment(&mut cache, 1, 0, 0xFF, 1);
        let backing = Image::zeroed(8 * BLOCK_SIZE);
        assert!(peer_view(&cache, &backing, ORDER).is_some());
        let at = format::RECORD_SECTOR as usize * SECTOR_SIZE;
        cache.write(at, &[0x5A; SECTOR_SIZE]);
        assert!(peer_view(&cache, &backing, ORDER).is_none());
    }

    #[test]
    fn only_orderly_rings_are_judged() {
        let mut cache = formatted();
        put_segment(&mut cache, 1, 0, 0xFF, 1);
        put_segment(&mut cache, 2, 1, 0xFF, 2);
        let backing = Image::zeroed(8 * BLOCK_SIZE);
        assert!(peer_view(&cache, &backing, ORDER).is_some());
        // Segment 4 without 3: a hole the peer would not see.
        put_segment(&mut cache, 4, 2, 0xFF, 4);
        assert!(peer_view(&cache, &backing, ORDER).is_none());
        put_segment(&mut cache, 3, 3, 0xFF, 3);
        let view = peer_view(&cache, &backing, ORDER).expect("orderly again");
        assert_eq!((sector(&view, 2 * 8), sector(&view, 3 * 8)), (4, 3));
        // A lap: 5 in slot 0, the rest 2..=4.
        put_segment(&mut cache, 5, 0, 0xFF, 5);
        assert!(peer_view(&cache, &backing, ORDER).is_some());
        // A stale slot: 6 was lost, slot 1 still holds 2 while 7 sits in slot 2.
        put_segment(&mut cache, 7, 0, 0xFF, 7);
        assert!(peer_view(&cache, &backing, ORDER).is_none());
    }
}
