//! `cache_image`: arbitrary bytes as a cache device (a type-0 template patched by the input, an
//! [`ImageInput`], at most [`image::MAX_CACHE_SECTORS`]) in front of a valid patterned backing
//! device.
//!
//! `SyncEngine::open` (never formatting) must give a typed error or a working engine. A working
//! engine must keep its invariants; every sector must read or fail with a typed error; unless
//! a read killed it, a block it accepts must read back, survive a flush and the background steps
//! then due, and, after a clean shutdown, a reopen. Never a panic, hang or unbounded memory.

use engine::format::SECTOR_SIZE;
use engine::{BlockDevice, MemDevice, SyncEngine};

use crate::image::{self, backing_image, open_config, ImageInput};

/// The input: a type-0 template patched.
pub type Input = ImageInput;

/// Runs the raw bytes of a corpus file as `fuzz_target!` does.
pub fn run(data: &[u8]) {
    if let Some(input) = crate::decode(data) {
        run_input(input);
    }
}

pub fn run_input(input: Input) {
    let d = input.build(|t| t.plog.is_none(), |t| &t.cache, image::MAX_CACHE_SECTORS);
    let opened = SyncEngine::open(
        MemDevice::from_bytes(d.image),
        MemDevice::from_bytes(backing_image()),
        open_config(),
    );
    if let Ok((engine, _report)) = opened {
        exercise(engine, d.probe, |c, b, p| {
            SyncEngine::open_with_plog(c, b, p, open_config()).map(|(e, _)| e)
        });
    }
}

/// Reads every sector, then (if alive) writes a block at `probe`, reads it back, flushes, runs
/// the due steps, shuts down cleanly and reopens with `reopen`: the block must still be there.
pub fn exercise<D: BlockDevice>(
    mut e: SyncEngine<D>,
    probe: u64,
    reopen: impl FnOnce(D, D, Option<D>) -> engine::Result<SyncEngine<D>>,
) {
    invariants(&e, "after open");
    let size = e.size_sectors();
    let mut buf = vec![0u8; 8 * SECTOR_SIZE];
    let mut s = 0;
    while s < size {
        let n = 8.min(size - s);
        // A corrupt block may fail (and kill the cache); it must not panic.
        let _ = e.read(s, &mut buf[..n as usize * SECTOR_SIZE]);
        s += n;
    }
    invariants(&e, "after reading every sector");
    if e.is_dead() || size < 8 {
        return;
    }
    let sector = probe % (size - 7);
    let data: Vec<u8> = (0..8 * SECTOR_SIZE)
        .map(|i| (i as u8) ^ (probe as u8) ^ 0x3C)
        .collect();
    // A partial-block write merges an older cached copy, which may be corrupt: a typed error.
    if e.write(sector, &data, false).is_err() {
        return;
    }
    let mut got = vec![0u8; data.len()];
    e.read(sector, &mut got)
        .unwrap_or_else(|err| panic!("read-back of {sector}+8 failed: {err}"));
    assert!(
        got == data,
        "read-back of {sector}+8 differs from the write"
    );
    // The flush and steps may hit a corrupt block the reads above did not (a cached copy is
    // only read when its segment is written back): an error is allowed, then stop.
    if e.flush().is_err() || e.run_due_steps().is_err() {
        return;
    }
    invariants(&e, "after a flush and the due steps");
    let Ok((c, b, p)) = e.shutdown_all() else {
        return;
    };
    let mut e =
        reopen(c, b, p).unwrap_or_else(|err| panic!("reopen after a clean shutdown: {err}"));
    invariants(&e, "after the reopen");
    e.read(sector, &mut got)
        .unwrap_or_else(|err| panic!("read of {sector}+8 after the reopen failed: {err}"));
    assert!(got == data, "{sector}+8 lost across a clean shutdown");
}

fn invariants<D: BlockDevice>(e: &SyncEngine<D>, when: &str) {
    if let Err(err) = e.check_invariants() {
        panic!("engine invariant broken {when}: {err}");
    }
}
