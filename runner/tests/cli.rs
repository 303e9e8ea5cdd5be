//! The subcommands around `serve`: format, status, message, writeback (also on an upstream
//! dm-writeboost image), argument checks, qemu-io, and the build's quirks line.

mod common;

use std::path::Path;

use common::*;
use engine::format::{self, Geometry, Metablock, BLOCK_SIZE, SECTOR_SIZE, SUPERBLOCK_MAGIC};

const MIB: u64 = 1 << 20;

#[test]
fn format_refuses_content_unless_forced() {
    let d = Devices::new(4 * MIB, 4 * MIB);
    // Data far into the first MiB, not in sector 0.
    let mut img = vec![0u8; 4 * MIB as usize];
    img[700_000] = 1;
    std::fs::write(&d.cache, &img).unwrap();
    let o = wbcache(&["format", "--cache", d.cache_str()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("offset 700000") && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );
    let o = wbcache(&[
        "format",
        "--cache",
        d.cache_str(),
        "--order",
        "6",
        "--force",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("segment order 6"), "{}", stdout(&o));
    // A formatted device is recognised as such.
    let o = wbcache(&["format", "--cache", d.cache_str()]);
    assert!(
        stderr(&o).contains("a wbcache cache device"),
        "{}",
        stderr(&o)
    );
    // Typed errors: bad order, odd size, missing file.
    let o = wbcache(&[
        "format",
        "--cache",
        d.cache_str(),
        "--order",
        "11",
        "--force",
    ]);
    assert!(
        !o.status.success() && stderr(&o).contains("order"),
        "{}",
        stderr(&o)
    );
    std::fs::File::create(&d.backing)
        .unwrap()
        .set_len(4 * MIB + 100)
        .unwrap();
    let o = wbcache(&["format", "--cache", d.backing_str()]);
    assert!(
        !o.status.success() && stderr(&o).contains("not a whole number of 512-byte sectors"),
        "{}",
        stderr(&o)
    );
    let o = wbcache(&["format", "--cache", "/nonexistent/cache.img"]);
    assert!(stderr(&o).contains("no such file"), "{}", stderr(&o));
}

#[test]
fn serve_refuses_an_unformatted_cache_and_bad_arguments_before_opening() {
    let d = Devices::new(4 * MIB, 4 * MIB);
    let sock = d.socket();
    let sock = sock.to_str().unwrap();
    let args = [
        "serve",
        "--backing",
        d.backing_str(),
        "--cache",
        d.cache_str(),
        "--socket",
        sock,
    ];
    let o = wbcache(&args);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("wbcache format --cache"),
        "{}",
        stderr(&o)
    );
    // An out-of-range tunable is the engine's typed error, before any device is opened.
    let o = wbcache(&[
        "serve",
        "--backing",
        "/nonexistent/b",
        "--cache",
        "/nonexistent/c",
        "--socket",
        sock,
        "--writeback_threshold",
        "101",
    ]);
    assert!(
        stderr(&o).contains("writeback_threshold") && stderr(&o).contains("0..=100"),
        "{}",
        stderr(&o)
    );
    let o = wbcache(&[
        "serve",
        "--backing",
        "/nonexistent/b",
        "--cache",
        "/nonexistent/c",
        "--listen",
        "192.0.2.1:10809",
    ]);
    assert!(stderr(&o).contains("--allow_remote"), "{}", stderr(&o));
    let o = wbcache(&["serve", "--backing", "b", "--cache", "c"]);
    assert!(
        stderr(&o).contains("--socket"),
        "socket or listen is required: {}",
        stderr(&o)
    );
}

#[test]
fn status_message_and_drop_caches_over_the_control_socket() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 6);
    let srv = Server::start(&d, &["--sync_interval", "1"]);
    let sock = srv.socket.to_str().unwrap().to_string();
    let mut c = srv.connect();
    for i in 0..100u64 {
        assert_eq!(c.write(i * 4096, &pattern(i, 4096), false), 0);
    }
    let o = wbcache(&["status", "--socket", &sock]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("nr_dirty_cache_blocks: 100"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("sync_interval: 1"), "{}", stdout(&o));
    let o = wbcache(&[
        "status",
        "--json",
        "--control",
        srv.control.to_str().unwrap(),
    ]);
    let json = stdout(&o);
    assert!(
        json.starts_with('{') && json.contains("\"nr_dirty_cache_blocks\": 100,"),
        "{json}"
    );
    assert!(json.contains("\"dead\": null"), "{json}");
    // Tunables by message, with the engine's range check.
    let o = wbcache(&["message", "--socket", &sock, "writeback_threshold", "150"]);
    assert!(
        !o.status.success() && stderr(&o).contains("0..=100"),
        "{}",
        stderr(&o)
    );
    let o = wbcache(&[
        "message",
        "--socket",
        &sock,
        "nr_max_batched_writeback",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = wbcache(&["message", "--socket", &sock, "clear_stat"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // drop_caches returns when the cache is clean; the backing file then holds the data.
    let o = wbcache(&["message", "--socket", &sock, "drop_caches"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("cache is clean (100 dirty block(s) written back"),
        "{}",
        stdout(&o)
    );
    let o = wbcache(&["status", "--socket", &sock]);
    assert!(
        stdout(&o).contains("nr_dirty_cache_blocks: 0"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("nr_max_batched_writeback: 2"),
        "{}",
        stdout(&o)
    );
    let backing = std::fs::read(&d.backing).unwrap();
    for i in 0..100usize {
        assert!(
            backing[i * 4096..][..4096] == pattern(i as u64, 4096)[..],
            "block {i}"
        );
    }
    // A second client still reads it all (now from the backing device).
    assert_eq!(c.read(0, 4096).unwrap(), pattern(0, 4096));
    let o = wbcache(&["status", "--control", "/nonexistent/ctl"]);
    assert!(
        stderr(&o).contains("cannot reach a wbcache server"),
        "{}",
        stderr(&o)
    );
    drop(c);
    assert!(srv.stop().0.success());
}

#[test]
fn offline_writeback_drains_a_wbcache_image() {
    let d = Devices::formatted(8 * MIB, 4 * MIB, 5);
    let srv = Server::start(&d, &[]);
    let mut c = srv.connect();
    for i in 0..50u64 {
        assert_eq!(c.write(i * 8192 + 1024, &pattern(i, 1024), false), 0);
    }
    drop(c);
    assert!(srv.stop().0.success());
    let o = d.writeback();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("wrote back 50 dirty block(s)"),
        "{}",
        stdout(&o)
    );
    let backing = std::fs::read(&d.backing).unwrap();
    for i in 0..50usize {
        let at = i * 8192;
        assert!(
            backing[at + 1024..at + 2048] == pattern(i as u64, 1024)[..],
            "block {i}"
        );
        assert!(
            backing[at..at + 1024].iter().all(|&b| b == 0),
            "only dirty sectors written"
        );
    }
    // Clean now: a second writeback has nothing to do.
    let o = d.writeback();
    assert!(
        stdout(&o).contains("wrote back 0 dirty block(s)"),
        "{}",
        stdout(&o)
    );
}

/// A cache device of whole sectors but not whole 4 KiB blocks (4 MiB + 1.5 KiB) formats, serves,
/// checks and drains: the tail past the last whole segment is left unused (issue 14, point 3).
#[test]
fn a_cache_of_whole_sectors_but_not_whole_blocks_is_used_up_to_its_last_segment() {
    let d = Devices::new(8 * MIB, 4 * MIB + 1536);
    let o = wbcache(&["format", "--cache", d.cache_str(), "--order", "7"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let srv = Server::start(&d, &[]);
    let mut c = srv.connect();
    for i in 0..40u64 {
        assert_eq!(c.write(i * 4096, &pattern(i, 4096), false), 0);
    }
    drop(c);
    assert!(srv.stop().0.success());
    let check = wbcache(&["check", d.cache_str()]);
    assert!(
        check.status.success(),
        "{}{}",
        stdout(&check),
        stderr(&check)
    );
    let o = d.writeback();
    assert!(o.status.success(), "{}", stderr(&o));
    let backing = std::fs::read(&d.backing).unwrap();
    for i in 0..40usize {
        assert!(
            backing[i * 4096..][..4096] == pattern(i as u64, 4096)[..],
            "block {i}"
        );
    }
    assert_eq!(
        std::fs::metadata(&d.cache).unwrap().len(),
        4 * MIB + 1536,
        "size untouched"
    );
    // A backing device must be whole blocks: refused by name and rule, before anything runs.
    std::fs::File::create(&d.backing)
        .unwrap()
        .set_len(8 * MIB + 512)
        .unwrap();
    let o = d.writeback();
    assert!(
        !o.status.success() && stderr(&o).contains("not a whole number of 4096-byte blocks"),
        "{}",
        stderr(&o)
    );
}

/// An order-10 segment as upstream dm-writeboost writes it: metablocks without our CRC
/// marker, data blocks after the header.
fn upstream_segment(id: u64, blocks: &[(u64, u8, u8)]) -> Vec<u8> {
    let mut seg = vec![0u8; format::segment_len_bytes(blocks.len())];
    for (i, &(sector, dirty_bits, fill)) in blocks.iter().enumerate() {
        let mb = Metablock {
            sector,
            dirty_bits,
            block_crc: None,
        };
        format::encode_metablock(&mut seg, i, &mb);
        seg[BLOCK_SIZE * (1 + i)..BLOCK_SIZE * (2 + i)].fill(fill);
    }
    format::seal_segment(&mut seg, id, blocks.len());
    seg
}

#[test]
fn offline_writeback_drains_an_upstream_dm_writeboost_image() {
    let d = Devices::new(4 * MIB, 0);
    // Superblock region plus three 512 KiB segments; magic only (no wbcache extension, junk
    // where it would be); record 0.
    let sectors = format::SUPERBLOCK_SECTORS + 3 * 1024;
    let mut img = vec![0u8; sectors as usize * SECTOR_SIZE];
    img[..4].copy_from_slice(&SUPERBLOCK_MAGIC.to_le_bytes());
    img[format::EXT_OFFSET..format::EXT_OFFSET + 36].fill(0xA5);
    let geo = Geometry::new(10, sectors).unwrap();
    // Segment 1: block 0 fully dirty, block 1 clean (read-cache entry), block 2 half dirty.
    // Segment 2: block 0 again, upper half dirty (upstream's newer copy).
    let seg1 = upstream_segment(1, &[(0, 0xFF, 0x11), (8, 0x00, 0x22), (16, 0x0F, 0x33)]);
    let seg2 = upstream_segment(2, &[(0, 0xF0, 0x44)]);
    for (slot, seg) in [(0u64, &seg1), (1, &seg2)] {
        let at = geo.slot_sector(slot) as usize * SECTOR_SIZE;
        img[at..at + seg.len()].copy_from_slice(seg);
    }
    std::fs::write(&d.cache, &img).unwrap();
    let o = d.writeback();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("upstream dm-writeboost image"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("replayed 2 segment(s)"),
        "{}",
        stderr(&o)
    );
    assert!(
        stdout(&o).contains("wrote back 2 dirty block(s)"),
        "{}",
        stdout(&o)
    );
    let backing = std::fs::read(&d.backing).unwrap();
    let mut want = vec![0u8; 3 * BLOCK_SIZE];
    // Newest copy of block 0 holds sectors 4..8 only; replay first writes back the older
    // copy's other sectors, as upstream's replay does; block 1 was clean; block 2 has sectors
    // 0..4.
    want[..4 * SECTOR_SIZE].fill(0x11);
    want[4 * SECTOR_SIZE..BLOCK_SIZE].fill(0x44);
    want[2 * BLOCK_SIZE..2 * BLOCK_SIZE + 4 * SECTOR_SIZE].fill(0x33);
    assert!(
        backing[..3 * BLOCK_SIZE] == want[..],
        "backing holds upstream's dirty data"
    );
    assert!(backing[3 * BLOCK_SIZE..].iter().all(|&b| b == 0));
}

#[test]
fn qemu_io_pattern_write_read_flush() {
    let qemu_io = Path::new("/usr/bin/qemu-io");
    assert!(
        qemu_io.exists(),
        "/usr/bin/qemu-io is not installed: `apt-get install -y qemu-utils` \
         (`cargo xtask test` installs it when missing)"
    );
    let d = Devices::formatted(16 * MIB, 4 * MIB, 7);
    let srv = Server::start(&d, &[]);
    let url = format!("nbd+unix:///?socket={}", srv.socket.display());
    let run = |cmds: &[&str]| {
        let mut args = vec!["-f", "raw"];
        for c in cmds {
            args.push("-c");
            args.push(c);
        }
        args.push(&url);
        let o = std::process::Command::new(qemu_io)
            .args(&args)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success()
                && !out.contains("fail")
                && !out.contains("Pattern verification failed"),
            "qemu-io {cmds:?}: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    };
    run(&[
        "write -P 0xa5 0 4M",
        "write -P 0x5a 1M 64k",
        "write -z 2M 128k",
        "flush",
    ]);
    let out = run(&[
        "read -P 0xa5 0 1M",
        "read -P 0x5a 1M 64k",
        "read -P 0 2M 128k",
        "read -P 0xa5 3M 1M",
        "read -P 0 4M 1M",
        "aio_write -P 0x77 8M 256k",
        "aio_flush",
        "read -P 0x77 8M 256k",
    ]);
    assert!(out.contains("read 262144/262144"), "{out}");
    assert!(srv.stop().0.success());
}

#[test]
fn the_binary_reports_whether_quirks_are_compiled_in() {
    let o = wbcache(&["--version"]);
    let v = stdout(&o);
    // `cargo test -p wbcache-runner` builds the engine as the binary ships: no quirks. A
    // `cargo test --workspace` build unifies features with crashsim (which enables
    // `engine/quirks`), and this test binary links that same engine build, so it knows which
    // case it is in; even then every quirk is off at run time (Config::default()).
    if engine::QUIRKS_COMPILED {
        assert!(v.contains("quirks: compiled in"), "{v}");
        eprintln!("note: feature-unified workspace build; the shipped binary is `cargo build -p wbcache-runner --release`");
    } else {
        assert!(v.contains("quirks: off"), "{v}");
    }
}

/// One spelling everywhere: names with `_` (as `status` and its JSON print them) in flags,
/// messages and help, `-` accepted too; the format generation in decimal in `format`,
/// `dump`, `check`, their JSON and the errors.
#[test]
fn names_and_generations_are_spelled_one_way_everywhere() {
    let help = stdout(&wbcache(&["serve", "--help"]));
    for shown in ["--nr_rambuf_pool", "--sync_interval", "--allow_remote"] {
        assert!(help.contains(shown), "{shown} in {help}");
    }
    for hidden in ["--nr-rambuf-pool", "--sync-interval", "--allow-remote"] {
        assert!(!help.contains(hidden), "{hidden} in {help}");
    }
    let d = Devices::new(8 * MIB, 4 * MIB);
    let o = wbcache(&["format", "--cache", d.cache_str(), "--order", "6"]);
    let out = stdout(&o);
    let generation = out.rsplit("generation ").next().unwrap().trim().to_string();
    assert!(
        generation.parse::<u64>().is_ok(),
        "decimal generation: {out}"
    );
    let dump = stdout(&wbcache(&["dump", d.cache_str()]));
    assert!(
        dump.contains(&format!("generation {generation},")),
        "{dump}"
    );
    let check = stdout(&wbcache(&["check", d.cache_str(), "--json"]));
    assert!(
        check.contains(&format!("\"generation\":{generation},")),
        "{check}"
    );
    let o = wbcache(&["format", "--cache", d.cache_str()]);
    assert!(
        stderr(&o).contains(&format!("generation {generation})")),
        "{}",
        stderr(&o)
    );
    // Both spellings of a flag and a message; status prints one.
    let srv = Server::start(&d, &["--nr-rambuf-pool", "4", "--sync-interval", "3"]);
    let sock = srv.socket.to_str().unwrap().to_string();
    let o = wbcache(&["message", "--socket", &sock, "update-record-interval", "9"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st = stdout(&wbcache(&["status", "--socket", &sock]));
    for line in [
        "nr_rambuf_pool: 4",
        "sync_interval: 3",
        "update_record_interval: 9",
    ] {
        assert!(st.contains(line), "{line} in {st}");
    }
    let json = stdout(&wbcache(&["status", "--json", "--socket", &sock]));
    assert!(json.contains("\"nr_rambuf_pool\": 4,"), "{json}");
    assert!(srv.stop().0.success());
}

#[test]
fn help_shows_the_defaults_and_check_and_dump_take_cache_as_a_flag() {
    let help = stdout(&wbcache(&["serve", "--help"]));
    for line in [
        "(0/1) [0..=1; default: 0]",
        "[0..=100; default: 70]",
        "[1..=1000; default: 32 at segment order 10, 2048 at order 4]",
        "[0..=3600; default: 0]",
        "[default: 8]",
    ] {
        assert!(help.contains(line), "{line} in {help}");
    }
    let d = Devices::formatted(8 * MIB, 4 * MIB, 6);
    for cmd in ["check", "dump"] {
        let positional = wbcache(&[cmd, d.cache_str()]);
        let flag = wbcache(&[cmd, "--cache", d.cache_str()]);
        assert!(flag.status.success(), "{cmd} --cache: {}", stderr(&flag));
        assert_eq!(stdout(&flag), stdout(&positional), "{cmd}");
        // One of the two, not both, not neither: a usage error.
        let both = wbcache(&[cmd, d.cache_str(), "--cache", d.cache_str()]);
        assert_eq!(both.status.code(), Some(2), "{}", stderr(&both));
        let neither = wbcache(&[cmd]);
        assert_eq!(neither.status.code(), Some(2), "{}", stderr(&neither));
    }
}
