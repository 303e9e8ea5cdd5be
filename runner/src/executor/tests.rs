//! What every file backend of the executor promises, checked on each (the thread pool always;
//! io_uring where this kernel allows it), on O_DIRECT and buffered files: data round-trips,
//! FUA and flush complete, every operation completes exactly once, also with many in flight
//! and when the device is dropped with work out, and a failure is an error, not a hang.

use std::collections::BTreeMap;
use std::time::Duration;

use engine::{Access, DeviceRole, IoData, IoDone, IoKind, IoOp, IoResult, OpId};

use super::select::{self, Backend, IoEngine};
use super::{AsyncDevice, Done};
use crate::events::{Event, Events};
use crate::filedev::{FileDevice, IoMode};
use crate::sync::Arc;

const BYTES: u64 = 4 << 20;

/// The pool and io_uring. A kernel that refuses io_uring fails the tests rather than passing
/// them on the pool alone, unless `WBCACHE_TEST_WITHOUT_URING=1` says that is meant.
fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Threads];
    match select::choose(IoEngine::Uring) {
        Ok(_) => v.push(Backend::Uring),
        Err(e) if std::env::var_os("WBCACHE_TEST_WITHOUT_URING").is_some() => {
            eprintln!(
                "io_uring refused ({e}): testing the pool only, as WBCACHE_TEST_WITHOUT_URING asks"
            )
        }
        Err(e) => panic!(
            "io_uring refused here ({e}): its backend would go untested; set \
             WBCACHE_TEST_WITHOUT_URING=1 to test the thread pool alone on this kernel"
        ),
    }
    v
}

/// Every backend on every I/O mode.
fn each_rig(test: impl Fn(&mut Rig)) {
    for backend in backends() {
        for mode in [IoMode::DirectIfSupported, IoMode::Buffered] {
            eprintln!("{backend}, {mode:?}");
            test(&mut Rig::new(backend, mode));
        }
    }
}

/// A device over a temporary file, and the completions it delivers.
struct Rig {
    file: tempfile::NamedTempFile,
    // Dropped before `dev`, as the server drops its executor before its devices.
    exec: Option<Box<dyn AsyncDevice>>,
    dev: FileDevice,
    events: Arc<Events>,
    next: u64,
    /// Submissions are not kicked one by one (see `batch`).
    batching: bool,
}

impl Rig {
    fn new(backend: Backend, mode: IoMode) -> Rig {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(BYTES).unwrap();
        let dev = FileDevice::open(file.path(), DeviceRole::Cache, mode, 0).unwrap();
        let exec = select::start(&dev, "test", backend).unwrap();
        assert_eq!(exec.size_sectors(), BYTES / 512);
        Rig {
            file,
            exec: Some(exec),
            dev,
            events: Arc::new(Events::new(8)),
            next: 0,
            batching: false,
        }
    }

    fn submit(&mut self, kind: IoKind) -> OpId {
        let id = OpId(self.next);
        self.next += 1;
        let done = Done::new(self.events.clone(), id, DeviceRole::Cache);
        let op = IoOp {
            id,
            role: DeviceRole::Cache,
            kind,
        };
        self.exec.as_ref().expect("not dropped").submit(op, done);
        if !self.batching {
            self.exec.as_ref().expect("not dropped").kick();
        }
        id
    }

    /// Submits what `f` submits as one batch, kicked once at the end (as the engine thread
    /// does after handing out all it has).
    fn batch(&mut self, f: impl FnOnce(&mut Rig)) {
        self.batching = true;
        f(self);
        self.batching = false;
        self.exec.as_ref().expect("not dropped").kick();
    }

    fn write(&mut self, sector: u64, data: Vec<u8>, fua: bool) -> OpId {
        self.submit(IoKind::Write {
            sector,
            data: IoData::from_vec(data),
            fua,
        })
    }

    /// The next `n` completions, each of a distinct operation (none may come twice).
    fn wait(&self, n: usize) -> BTreeMap<OpId, IoResult> {
        let mut got = BTreeMap::new();
        while got.len() < n {
            match self.events.pop_timeout(Duration::from_secs(20)) {
                Event::Done(op, r) => {
                    assert!(got.insert(op, r).is_none(), "{op:?} completed twice");
                }
                Event::Timeout => panic!("{} of {n} completions came", got.len()),
                _ => panic!("an event other than a completion"),
            }
        }
        got
    }

    /// No further completion arrives.
    fn quiet(&self) {
        if let Event::Done(op, _) = self.events.pop_timeout(Duration::from_millis(100)) {
            panic!("{op:?} completed once too often");
        }
    }

    fn read(&mut self, sector: u64, len: usize) -> Vec<u8> {
        let id = self.submit(IoKind::Read { sector, len });
        match self.wait(1).remove(&id) {
            Some(Ok(IoDone::Read(v))) => v,
            other => panic!("read of {sector}+{len}: {other:?}"),
        }
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31) as usize + i * 7) as u8)
        .collect()
}

#[test]
fn reads_return_what_writes_wrote_aligned_or_not() {
    each_rig(|rig| {
        let mut model = vec![0u8; BYTES as usize];
        // Whole blocks, single sectors (a read-modify-write under a 4096-byte alignment), a
        // run across blocks, and data starting at an odd place in its buffer.
        let shared = Arc::new(pattern(99, 3 * 4096));
        let writes = [
            (0u64, IoData::from_vec(pattern(1, 4096))),
            (9, IoData::from_vec(pattern(2, 512))),
            (17, IoData::from_vec(pattern(3, 5 * 512))),
            (64, IoData::from_vec(pattern(4, 64 * 1024))),
            (512, IoData::new(shared, 512..512 + 8192)),
        ];
        let n = writes.len();
        for (sector, data) in writes {
            let at = sector as usize * 512;
            model[at..at + data.len()].copy_from_slice(data.as_slice());
            rig.submit(IoKind::Write {
                sector,
                data,
                fua: false,
            });
        }
        assert!(rig.wait(n).values().all(|r| *r == Ok(IoDone::Write)));
        for (sector, len) in [
            (0u64, 8192usize),
            (9, 512),
            (16, 4096),
            (64, 65536),
            (511, 9216),
        ] {
            let at = sector as usize * 512;
            assert_eq!(rig.read(sector, len), model[at..at + len], "{sector}+{len}");
        }
        assert_eq!(std::fs::read(rig.file.path()).unwrap(), model);
        rig.quiet();
    });
}

#[test]
fn fua_writes_and_flushes_complete() {
    each_rig(|rig| {
        let w = rig.write(8, pattern(5, 4096), true);
        let f = rig.submit(IoKind::Flush);
        let u = rig.write(3, pattern(6, 512), true);
        let got = rig.wait(3);
        assert_eq!(got[&w], Ok(IoDone::Write));
        assert_eq!(got[&f], Ok(IoDone::Flush));
        assert_eq!(got[&u], Ok(IoDone::Write));
        assert_eq!(rig.read(8, 4096), pattern(5, 4096));
        assert_eq!(rig.read(3, 512), pattern(6, 512));
        rig.quiet();
    });
}

/// A stream of back-to-back writes queued faster than the device takes them is merged into
/// larger transfers (the pool's runs, io_uring's `writev`s); a FUA write in the middle and a
/// misaligned neighbour split a run, and every byte lands where its own write said.
#[test]
fn back_to_back_writes_queued_together_land_in_place() {
    each_rig(|rig| {
        let blocks = BYTES / 4096;
        rig.batch(|rig| {
            for b in 0..blocks {
                rig.write(b * 8, pattern(1000 + b, 4096), b == blocks / 2);
            }
        });
        let n = rig.next as usize;
        assert!(rig.wait(n).values().all(|r| r.is_ok()), "all succeed");
        for chunk in 0..BYTES / (1 << 20) {
            let got = rig.read(chunk * 2048, 1 << 20);
            for (i, block) in got.chunks(4096).enumerate() {
                let b = chunk * 256 + i as u64;
                assert!(block == pattern(1000 + b, 4096), "block {b}");
            }
        }
        rig.quiet();
    });
}

#[test]
fn many_operations_in_flight_each_complete_exactly_once() {
    each_rig(|rig| {
        // More than the ring's queue depth: some wait for room.
        let blocks = 256u64;
        for b in 0..blocks {
            rig.write(b * 8, pattern(b, 4096), false);
            rig.submit(IoKind::Read {
                sector: (blocks + b) * 8,
                len: 4096,
            });
            if b % 64 == 0 {
                rig.submit(IoKind::Flush);
            }
        }
        let n = rig.next as usize;
        let got = rig.wait(n);
        assert_eq!(got.len(), n);
        assert!(got.values().all(|r| r.is_ok()), "all succeed");
        for b in (0..blocks).step_by(37) {
            assert_eq!(rig.read(b * 8, 4096), pattern(b, 4096));
        }
        rig.quiet();
    });
}

#[test]
fn failures_complete_with_errors_naming_the_access() {
    each_rig(|rig| {
        let sectors = BYTES / 512;
        let past = rig.submit(IoKind::Read {
            sector: sectors - 1,
            len: 4096,
        });
        let e = rig.wait(1).remove(&past).unwrap().unwrap_err();
        assert_eq!((e.op, e.sector), (Access::Read, sectors - 1));
        // The file shrinks under the device: a read inside the device but past the file's
        // end comes back short, and fails.
        rig.file.as_file().set_len(BYTES / 2).unwrap();
        let short = rig.submit(IoKind::Read {
            sector: sectors - 8,
            len: 4096,
        });
        let e = rig.wait(1).remove(&short).unwrap().unwrap_err();
        assert_eq!((e.op, e.sector, e.sectors), (Access::Read, sectors - 8, 8));
        rig.quiet();
    });
}

#[test]
fn dropping_the_device_with_work_out_completes_each_operation_once() {
    each_rig(|rig| {
        for b in 0..300u64 {
            rig.write(b * 8, pattern(b, 4096), b % 50 == 0);
            rig.write(b * 8 + 2048 + 1, pattern(b, 512), false);
        }
        rig.submit(IoKind::Flush);
        let n = rig.next as usize;
        drop(rig.exec.take());
        let got = rig.wait(n);
        assert!(got.values().all(|r| r.is_ok()), "finished, not abandoned");
        rig.quiet();
        assert_eq!(rig.dev.path(), rig.file.path());
    });
}
