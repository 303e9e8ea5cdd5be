//! The seed corpora: a handful of meaningful inputs per target, written to `fuzz/corpus/` by
//! `cargo run -p wbcache-fuzz-targets --example seeds` (the committed files are its output plus
//! the regressions of findings).

use crate::image::encode;

/// `(target, file name, input)` of every seed.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut v = Vec::new();
    for (name, input) in ops() {
        v.push(("ops", name.to_string(), input));
    }
    for (name, input) in images(false) {
        v.push(("cache_image", name.clone(), input.clone()));
        v.push(("check", name, input));
    }
    for (name, input) in images(true) {
        v.push(("plog_image", name, input));
    }
    for (name, input) in nbd() {
        v.push(("nbd_stream", name.to_string(), input));
    }
    v
}

// ----- ops -----

fn w(b: u8) -> Vec<u8> {
    vec![0, b]
}
fn part(b: u8, first: u8, count: u8) -> Vec<u8> {
    vec![2, b, first, count - 1]
}
fn multi(sector: u8, len: u8) -> Vec<u8> {
    vec![3, sector, len - 1]
}
fn fua(b: u8) -> Vec<u8> {
    vec![4, b]
}
fn discard(sector: u8, len: u8) -> Vec<u8> {
    vec![5, sector, len - 1]
}
fn flush() -> Vec<u8> {
    vec![6]
}
/// 0 seal, 1 flush segment, 2 writeback, 3 record, 4 sync.
fn step(k: u8) -> Vec<u8> {
    vec![7, k]
}

fn ops_input(flags: u8, geo: [u8; 4], crashes: u8, ops: &[Vec<u8>], tail: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&geo);
    v.push(1); // seed
    v.push(crashes);
    v.push(ops.len() as u8);
    for op in ops {
        v.extend_from_slice(op);
    }
    v.extend_from_slice(tail);
    v
}

fn ops() -> Vec<(&'static str, Vec<u8>)> {
    let basic = vec![
        w(0),
        part(1, 2, 3),
        flush(),
        w(1),
        fua(2),
        w(0),
        discard(8, 8),
        flush(),
    ];
    let wrap: Vec<Vec<u8>> = (0..16)
        .flat_map(|i| {
            let mut x = vec![w(i % 4)];
            if i % 3 == 2 {
                x.push(flush());
            }
            if i % 4 == 3 {
                x.push(step(2));
                x.push(step(3));
            }
            x
        })
        .collect();
    let steps = vec![
        w(0),
        w(1),
        step(0),
        step(1),
        step(2),
        step(3),
        part(0, 3, 2),
        step(4),
        multi(5, 20),
        flush(),
        step(2),
        step(3),
        w(2),
    ];
    // Per cut: point index, then persist bytes (1 whole, 3 torn + mask).
    let tail_a = [
        5, 0, 1, 1, 1, 1, 2, 0, 3, 0x55, 0xAA, 1, 1, 40, 0, 1, 0, 1, 3, 0x0f, 1,
    ];
    let tail_b = [200, 0, 3, 0xf0, 0x0f, 1, 3, 0x33, 1, 9, 1, 0, 1, 0, 1];
    vec![
        ("t0-basic", ops_input(0, [0, 2, 0, 0], 2, &basic, &tail_a)),
        (
            "t0-wrap",
            ops_input(0, [0, 2, 0x10, 0], 3 | 128, &wrap, &tail_b),
        ),
        (
            "t0-steps-o5-unit8",
            ops_input(2 | 4, [1, 6, 1, 0], 2 | 128, &steps, &tail_a),
        ),
        (
            "t0-garbage-torn",
            ops_input(8, [2, 3, 2, 0], 3, &basic, &tail_b),
        ),
        (
            "t1-basic",
            ops_input(1, [1, 4, 1, 0], 3 | 128, &basic, &tail_a),
        ),
        (
            "t1-wrap",
            ops_input(1, [0, 2, 0, 0], 2 | 128, &wrap, &tail_b),
        ),
        ("t1-steps", ops_input(1, [2, 5, 2, 2], 2, &steps, &tail_a)),
        (
            "t0-eio-write",
            ops_input(16, [0, 2, 0, 0], 1, &wrap, &tail_a),
        ),
    ]
}

// ----- images -----

fn images(plog: bool) -> Vec<(String, Vec<u8>)> {
    let names: Vec<&str> = crate::image::templates()
        .iter()
        .filter(|t| t.plog.is_some() == plog)
        .map(|t| t.name)
        .collect();
    let mut v = Vec::new();
    for (i, name) in names.iter().enumerate() {
        v.push((name.to_string(), encode(i as u8, None, 3, &[])));
    }
    let slot0 = 2048 * 512u32;
    if plog {
        // Plog images: a flipped entry byte, a torn entry, a zeroed superblock, truncated.
        v.push((
            "plog-t1-entry-flip".into(),
            encode(1, None, 9, &[(16 * 512 + 40, &[0x80])]),
        ));
        v.push((
            "plog-t1-second-entry".into(),
            encode(1, None, 9, &[(17 * 512 + 4, &[1, 2, 3])]),
        ));
        v.push((
            "plog-t1-sb-flip".into(),
            encode(1, None, 0, &[(8, &[0xff; 8])]),
        ));
        v.push((
            "plog-many-t1-truncated".into(),
            encode(2, Some(300), 17, &[]),
        ));
    } else {
        // Cache images: records, a header id, a length, a block, sizes.
        v.push((
            "busy-o4-record".into(),
            encode(2, None, 5, &[(2047 * 512, &[1])]),
        ));
        v.push((
            "busy-o4-backup-record".into(),
            encode(2, None, 5, &[(2039 * 512, &[2])]),
        ));
        v.push((
            "busy-o4-slot-id".into(),
            encode(2, None, 5, &[(slot0 + 16 * 512, &[1])]),
        ));
        v.push((
            "busy-o4-length".into(),
            encode(2, None, 5, &[(slot0 + 12, &[0x7f])]),
        ));
        v.push((
            "busy-o4-data".into(),
            encode(2, None, 5, &[(slot0 + 4096 + 100, &[0xff])]),
        ));
        v.push((
            "wrapped-o4-ext-order".into(),
            encode(4, None, 77, &[(256 + 8, &[1])]),
        ));
        v.push(("fresh-o4-small".into(), encode(1, Some(2100), 1, &[])));
        v.push((
            "upstream-metablock".into(),
            encode(5, None, 2, &[(slot0 + 512, &[0x13])]),
        ));
    }
    v
}

// ----- nbd -----

fn opt(option: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&runner::nbd::proto::IHAVEOPT.to_be_bytes());
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn info_req(name: &[u8]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name);
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&3u16.to_be_bytes());
    d
}

fn req(kind: u16, flags: u16, handle: u64, offset: u64, len: u32, payload: bool) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&runner::nbd::proto::REQUEST_MAGIC.to_be_bytes());
    v.extend_from_slice(&flags.to_be_bytes());
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(&handle.to_be_bytes());
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    if payload {
        v.extend((0..len).map(|i| (i as u8) ^ (handle as u8)));
    }
    v
}

fn nbd() -> Vec<(&'static str, Vec<u8>)> {
    let go = {
        let mut v = vec![0u8]; // mode: handshake
        v.extend_from_slice(&3u32.to_be_bytes());
        v.extend(opt(7, &info_req(b"")));
        v
    };
    let session = [
        req(1, 0, 1, 0, 4096, true),
        req(0, 0, 2, 0, 8192, false),
        req(1, 1, 3, 512, 1024, true),
        req(3, 0, 4, 0, 0, false),
        req(4, 0, 5, 4096, 4096, false),
        req(6, 3, 6, 8192, 1024, false),
        req(0, 0, 7, 0, 16384, false),
        req(2, 0, 8, 0, 0, false),
    ]
    .concat();
    let haggle = {
        let mut v = vec![0u8];
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend(opt(3, &[]));
        v.extend(opt(6, &info_req(b"wbcache")));
        v.extend(opt(8, &[]));
        v.extend(opt(6, &info_req(b"other")));
        v.extend(opt(1, b"wbcache"));
        v.extend(req(0, 0, 1, 512, 512, false));
        v
    };
    let refused = [
        vec![1u8], // mode: transmission only
        req(0, 0, 1, 100, 512, false),
        req(1, 0, 2, 1 << 20, 512, true),
        req(1, 4, 3, 0, 512, true),
        req(9, 0, 4, 0, 0, false),
        req(3, 0, 5, 512, 0, false),
        req(0, 0, 6, 0, 0, false),
        req(1, 0, 7, 512, 512, true),
        req(0, 0, 8, 0, 1024, false),
    ]
    .concat();
    let abort = {
        let mut v = vec![0u8];
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend(opt(2, &[]));
        v
    };
    vec![
        ("go-session", [go, session].concat()),
        ("haggle-export-name", haggle),
        ("refused-requests", refused),
        ("abort", abort),
    ]
}
