//! `NbdDevice` (the runner's NBD client) against real servers: nbdkit (memory, file, and
//! filters that take features away, inject errors, delay, or enforce a small maximum payload)
//! and qemu-nbd. Never skipped: a missing server fails with the install command.

mod common;
mod nbd_servers;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::pattern;
use engine::{BlockDevice, DeviceRole, IoError, ReadReq, WriteReq};
use nbd_servers::NbdServer;
use runner::nbd::client::{
    HandshakeError, NbdClientError, NbdDevice, NbdOptions, NbdReq, NbdUri, Outcome,
};

const MIB: u64 = 1 << 20;

fn connect(uri: &str, role: DeviceRole) -> NbdDevice {
    let u: NbdUri = uri.parse().unwrap();
    NbdDevice::connect(&u, role).unwrap_or_else(|e| panic!("{e}"))
}

fn connect_err(uri: &str, role: DeviceRole, read_only: bool) -> NbdClientError {
    let u: NbdUri = uri.parse().unwrap();
    let opts = NbdOptions {
        read_only,
        ..NbdOptions::default()
    };
    match NbdDevice::connect_with(&u, role, &opts) {
        Ok(d) => panic!("{uri} connected: {d:?}"),
        Err(e) => e,
    }
}

/// Submits and waits (with hang protection).
fn run(d: &NbdDevice, req: NbdReq) -> Outcome {
    let (tx, rx) = mpsc::channel();
    d.submit(
        req,
        Box::new(move |r| {
            tx.send(r).unwrap();
        }),
    );
    rx.recv_timeout(Duration::from_secs(60))
        .expect("a request completed")
}

fn read(d: &NbdDevice, sector: u64, len: usize) -> Vec<u8> {
    run(d, NbdReq::Read { sector, len })
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("read data")
}

fn write(d: &NbdDevice, sector: u64, data: Vec<u8>, fua: bool) {
    run(d, NbdReq::write(sector, data, fua)).unwrap_or_else(|e| panic!("{e}"));
}

fn sparse_file(dir: &std::path::Path, name: &str, len: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(len).unwrap();
    p
}

#[test]
fn handshake_reports_size_flags_and_block_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let mem = NbdServer::nbdkit(dir.path(), "mem", &["memory", "size=16M"]);
    let d = connect(&mem.uri(""), DeviceRole::Cache);
    let i = *d.info();
    assert_eq!(d.size_sectors(), 16 * MIB / 512);
    assert!(i.go, "NBD_OPT_GO, not the EXPORT_NAME fallback");
    assert!(i.can_flush() && i.can_fua() && i.can_trim() && !i.read_only());
    assert!(i.sizes.min <= 512 && i.sizes.max >= 4096, "{:?}", i.sizes);

    let file = sparse_file(dir.path(), "f.img", 8 * MIB);
    let kit = NbdServer::nbdkit(dir.path(), "file", &["file", file.to_str().unwrap()]);
    let d = connect(&kit.uri(""), DeviceRole::Backing);
    assert_eq!(d.size_sectors(), 8 * MIB / 512);
    assert!(d.info().can_flush() && d.info().can_fua());

    let q = sparse_file(dir.path(), "q.img", 12 * MIB);
    let qemu = NbdServer::qemu_nbd(dir.path(), "qemu", &q, &["-x", "disk", "--shared=2"]);
    let d = connect(&qemu.uri("disk"), DeviceRole::Plog);
    let i = *d.info();
    assert_eq!(d.size_sectors(), 12 * MIB / 512);
    assert!(i.go && i.can_flush() && i.can_fua() && i.can_trim());
    assert_eq!(i.sizes.max, 32 << 20, "qemu-nbd advertises 32 MiB");
    assert_eq!(d.max_request_bytes(), 32 << 20);
    // qemu-nbd knows its export names: another one is NBD_REP_ERR_UNKNOWN, said so.
    let e = connect_err(&qemu.uri("nothere"), DeviceRole::Plog, false);
    assert!(
        matches!(
            &e,
            NbdClientError::Handshake {
                error: HandshakeError::UnknownExport { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("\"nothere\""), "{e}");
}

#[test]
fn read_write_flush_fua_trim_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let q = sparse_file(dir.path(), "q.img", 8 * MIB);
    let servers = [
        NbdServer::nbdkit(dir.path(), "mem", &["memory", "size=8M"]),
        NbdServer::qemu_nbd(dir.path(), "qemu", &q, &["--discard=unmap"]),
    ];
    for srv in &servers {
        let mut d = connect(&srv.uri(""), DeviceRole::Cache);
        let a = pattern(1, 64 << 10);
        write(&d, 0, a.clone(), false);
        let b = pattern(2, 4096);
        write(&d, 2048, b.clone(), true);
        run(&d, NbdReq::Flush).unwrap();
        assert_eq!(read(&d, 0, a.len()), a);
        assert_eq!(read(&d, 2048, b.len()), b);
        // Single sectors and the last sector of the export.
        write(&d, d.size_sectors() - 1, pattern(3, 512), false);
        assert_eq!(read(&d, d.size_sectors() - 1, 512), pattern(3, 512));
        // TRIM then (both servers punch holes) zeros.
        run(
            &d,
            NbdReq::Trim {
                sector: 8,
                sectors: 8,
            },
        )
        .unwrap();
        let mut want = a.clone();
        want[4096..8192].fill(0);
        assert_eq!(read(&d, 0, a.len()), want, "{}", srv.uri(""));
        // Past the end: refused before anything is sent, the device lives on.
        let e = run(
            &d,
            NbdReq::Read {
                sector: d.size_sectors(),
                len: 512,
            },
        )
        .unwrap_err();
        assert!(e.detail.contains("beyond device end"), "{e}");
        // The synchronous BlockDevice face: batches in flight together.
        let (x, y) = (pattern(4, 8192), pattern(5, 512));
        d.write_batch(&[
            WriteReq {
                sector: 100,
                data: &x,
                fua: false,
            },
            WriteReq {
                sector: 300,
                data: &y,
                fua: true,
            },
        ])
        .unwrap();
        d.flush().unwrap();
        let (mut rx, mut ry) = (vec![0u8; 8192], vec![0u8; 512]);
        d.read_batch(&mut [
            ReadReq {
                sector: 100,
                buf: &mut rx,
            },
            ReadReq {
                sector: 300,
                buf: &mut ry,
            },
        ])
        .unwrap();
        assert_eq!((rx, ry), (x, y));
        assert!(d.dead().is_none());
    }
}

#[test]
fn flushed_writes_reach_the_servers_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = sparse_file(dir.path(), "f.img", 4 * MIB);
    let kit = NbdServer::nbdkit(dir.path(), "file", &["file", f.to_str().unwrap()]);
    let d = connect(&kit.uri(""), DeviceRole::Backing);
    let a = pattern(7, 128 << 10);
    write(&d, 16, a.clone(), false);
    run(&d, NbdReq::Flush).unwrap();
    drop(d); // NBD_CMD_DISC
    let img = std::fs::read(&f).unwrap();
    assert_eq!(&img[16 * 512..16 * 512 + a.len()], &a[..]);
}

/// nbdkit's log filter, outermost, sees exactly what the client sends.
fn logged_commands(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(" Write ") || l.contains(" Flush "))
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn fua_is_native_where_offered_else_write_then_flush() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("native.log");
    let lf = format!("logfile={}", log.display());
    let kit = NbdServer::nbdkit(
        dir.path(),
        "native",
        &["--filter=log", "memory", "size=1M", &lf],
    );
    let d = connect(&kit.uri(""), DeviceRole::Cache);
    write(&d, 0, pattern(1, 4096), true);
    drop(d);
    let cmds = logged_commands(&log);
    assert_eq!(cmds.len(), 1, "{cmds:?}");
    assert!(cmds[0].contains("fua=1"), "{cmds:?}");

    let log = dir.path().join("nofua.log");
    let lf = format!("logfile={}", log.display());
    let kit = NbdServer::nbdkit(
        dir.path(),
        "nofua",
        // The fua filter's default mode: FUA not advertised, flush passed through.
        &["--filter=log", "--filter=fua", "memory", "size=1M", &lf],
    );
    let d = connect(&kit.uri(""), DeviceRole::Cache);
    assert!(!d.info().can_fua() && d.info().can_flush());
    write(&d, 0, pattern(1, 4096), true);
    assert_eq!(read(&d, 0, 4096), pattern(1, 4096));
    drop(d);
    let cmds = logged_commands(&log);
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(
        cmds[0].contains("Write") && cmds[0].contains("fua=0"),
        "{cmds:?}"
    );
    assert!(cmds[1].contains("Flush"), "{cmds:?}");
}

#[test]
fn servers_without_flush_or_writes_are_refused_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    // An export that reads zeros, takes writes, and cannot flush.
    let kit = NbdServer::nbdkit(
        dir.path(),
        "noflush",
        &[
            "eval",
            "get_size=echo 1048576",
            "pread=dd if=/dev/zero count=$3 iflag=count_bytes status=none",
            "pwrite=cat >/dev/null",
            "can_write=exit 0",
            "can_flush=exit 3",
        ],
    );
    for role in [DeviceRole::Cache, DeviceRole::Plog, DeviceRole::Backing] {
        let e = connect_err(&kit.uri(""), role, false);
        assert!(matches!(e, NbdClientError::NoFlush { .. }), "{e}");
        assert!(e.to_string().contains("does not support FLUSH"), "{e}");
    }
    // Read-only use (check, dump) does not need flush.
    let u: NbdUri = kit.uri("").parse().unwrap();
    let ro = NbdOptions {
        read_only: true,
        ..NbdOptions::default()
    };
    let d = NbdDevice::connect_with(&u, DeviceRole::Cache, &ro).unwrap();
    assert_eq!(read(&d, 0, 4096), vec![0u8; 4096]);
    let e = run(&d, NbdReq::write(0, vec![0u8; 512], false)).unwrap_err();
    assert!(e.detail.contains("read-only"), "{e}");

    let kit = NbdServer::nbdkit(dir.path(), "ro", &["-r", "memory", "size=1M"]);
    let e = connect_err(&kit.uri(""), DeviceRole::Cache, false);
    assert!(matches!(e, NbdClientError::ReadOnly { .. }), "{e}");
    // Not whole sectors: refused like such a file.
    let kit = NbdServer::nbdkit(dir.path(), "odd", &["memory", "size=1000000"]);
    let e = connect_err(&kit.uri(""), DeviceRole::Cache, false);
    assert!(matches!(e, NbdClientError::Size { .. }), "{e}");
    // Whole sectors but not whole 4 KiB blocks: a cache (or plog) device, not a backing one,
    // as for files.
    let kit = NbdServer::nbdkit(dir.path(), "sectors", &["memory", "size=1000448"]);
    let u: NbdUri = kit.uri("").parse().unwrap();
    let d = NbdDevice::connect(&u, DeviceRole::Cache).unwrap();
    assert_eq!(d.size_sectors(), 1000448 / 512);
    drop(d);
    let e = connect_err(&kit.uri(""), DeviceRole::Backing, false);
    assert!(matches!(e, NbdClientError::BackingSize { .. }), "{e}");
}

#[test]
fn an_error_reply_fails_the_request_not_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("fail-writes");
    let t = format!("error-pwrite-file={}", trigger.display());
    let kit = NbdServer::nbdkit(
        dir.path(),
        "err",
        &[
            "--filter=error",
            "memory",
            "size=1M",
            "error-pwrite=EIO",
            "error-pwrite-rate=100%",
            &t,
        ],
    );
    let d = connect(&kit.uri(""), DeviceRole::Backing);
    write(&d, 0, pattern(1, 4096), false);
    std::fs::write(&trigger, b"").unwrap();
    let e = run(&d, NbdReq::write(8, pattern(2, 4096), false)).unwrap_err();
    assert_eq!((e.sector, e.sectors), (8, 8));
    assert!(
        e.detail.contains("EIO") && e.detail.contains("backing device nbd+unix"),
        "{e}"
    );
    std::fs::remove_file(&trigger).unwrap();
    assert!(d.dead().is_none());
    write(&d, 8, pattern(3, 4096), false);
    assert_eq!(
        read(&d, 0, 8192),
        [pattern(1, 4096), pattern(3, 4096)].concat()
    );
}

#[test]
fn many_requests_in_flight_complete_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let kit = NbdServer::nbdkit(dir.path(), "mem", &["memory", "size=4M"]);
    let d = Arc::new(connect(&kit.uri(""), DeviceRole::Cache));
    let n = 256usize;
    let counts: Arc<Vec<AtomicU32>> = Arc::new((0..2 * n).map(|_| AtomicU32::new(0)).collect());
    let (tx, rx) = mpsc::channel::<(usize, Outcome)>();
    // Four threads submit 64 writes each at once: 256 requests against a window of 64.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (d, counts, tx) = (d.clone(), counts.clone(), tx.clone());
            std::thread::spawn(move || {
                for i in (t..n).step_by(4) {
                    let (counts, tx) = (counts.clone(), tx.clone());
                    d.submit(
                        NbdReq::write(i as u64 * 8, pattern(i as u64, 4096), i % 7 == 0),
                        Box::new(move |r| {
                            counts[i].fetch_add(1, Ordering::SeqCst);
                            tx.send((i, r)).unwrap();
                        }),
                    );
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    for _ in 0..n {
        let (i, r) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(r.unwrap(), None, "write {i}");
    }
    // Then 256 reads at once, checked.
    for i in 0..n {
        let (counts, tx) = (counts.clone(), tx.clone());
        d.submit(
            NbdReq::Read {
                sector: i as u64 * 8,
                len: 4096,
            },
            Box::new(move |r| {
                counts[n + i].fetch_add(1, Ordering::SeqCst);
                tx.send((i, r)).unwrap();
            }),
        );
    }
    for _ in 0..n {
        let (i, r) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        assert_eq!(r.unwrap().unwrap(), pattern(i as u64, 4096), "read {i}");
    }
    std::thread::sleep(Duration::from_millis(50));
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(c.load(Ordering::SeqCst), 1, "request {i} completed once");
    }
}

#[test]
fn requests_really_overlap_in_flight() {
    // Each read waits 100 ms in the server: 64 reads one at a time would take 6.4 s.
    let dir = tempfile::tempdir().unwrap();
    let kit = NbdServer::nbdkit(
        dir.path(),
        "slow",
        &["--filter=delay", "memory", "size=1M", "rdelay=100ms"],
    );
    let d = connect(&kit.uri(""), DeviceRole::Backing);
    let t = Instant::now();
    let (tx, rx) = mpsc::channel();
    for i in 0..64u64 {
        let tx = tx.clone();
        d.submit(
            NbdReq::Read {
                sector: i * 8,
                len: 4096,
            },
            Box::new(move |r| tx.send(r.map(|_| ())).unwrap()),
        );
    }
    for _ in 0..64 {
        rx.recv_timeout(Duration::from_secs(60)).unwrap().unwrap();
    }
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(3200),
        "64 delayed reads took {took:?}"
    );
}

#[test]
fn requests_above_the_servers_maximum_are_split() {
    // blocksize-policy refuses (EINVAL) anything above its maximum, so only a client that
    // splits gets through.
    let dir = tempfile::tempdir().unwrap();
    let kit = NbdServer::nbdkit(
        dir.path(),
        "small",
        &[
            "--filter=blocksize-policy",
            "memory",
            "size=8M",
            "blocksize-preferred=4096",
            "blocksize-maximum=4096",
            "blocksize-error-policy=error",
        ],
    );
    let d = connect(&kit.uri(""), DeviceRole::Cache);
    assert_eq!(d.info().sizes.max, 4096);
    assert_eq!(d.max_request_bytes(), 4096);
    // 1 MiB + 1 sector at an odd sector: 258 pieces, four windows' worth.
    let a = pattern(9, (1 << 20) + 512);
    write(&d, 3, a.clone(), true);
    run(&d, NbdReq::Flush).unwrap();
    assert_eq!(read(&d, 3, a.len()), a);
    run(
        &d,
        NbdReq::Trim {
            sector: 3,
            sectors: 2049,
        },
    )
    .unwrap();
    assert_eq!(read(&d, 3, a.len()), vec![0u8; a.len()]);

    // The blocksize filter splits on the server side and so advertises no limit: the client
    // then keeps to its own 32 MiB.
    let kit = NbdServer::nbdkit(
        dir.path(),
        "splitter",
        &["--filter=blocksize", "memory", "size=8M", "maxdata=65536"],
    );
    let d = connect(&kit.uri(""), DeviceRole::Cache);
    assert_eq!(d.max_request_bytes(), 32 << 20);
    let a = pattern(10, 4 << 20);
    write(&d, 0, a.clone(), true);
    assert_eq!(read(&d, 0, a.len()), a);
}

#[test]
fn a_server_killed_mid_run_fails_every_request_and_nothing_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let mut kit = NbdServer::nbdkit(
        dir.path(),
        "doomed",
        &["--filter=delay", "memory", "size=4M", "rdelay=2000ms"],
    );
    let d = connect(&kit.uri(""), DeviceRole::Backing);
    let (tx, rx) = mpsc::channel();
    for i in 0..32u64 {
        let tx = tx.clone();
        d.submit(
            NbdReq::Read {
                sector: i * 8,
                len: 4096,
            },
            Box::new(move |r| tx.send(r).unwrap()),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    kit.kill();
    for _ in 0..32 {
        let r: Result<_, IoError> = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let e = r.unwrap_err();
        assert!(e.detail.contains("connection is dead"), "{e}");
    }
    let cause = d.dead().expect("dead");
    assert!(
        cause.contains("closed the connection") || cause.contains("failed"),
        "{cause}"
    );
    // Later requests fail at once, with the same cause.
    let e = run(&d, NbdReq::write(0, vec![1u8; 512], false)).unwrap_err();
    assert!(e.detail.contains(&cause), "{e}");
    let e = run(&d, NbdReq::Flush).unwrap_err();
    assert!(e.detail.contains("backing device"), "{e}");
    drop(d); // must not hang
}

#[test]
fn tcp_uris_work_too() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = std::process::Command::new(nbd_servers::tool("nbdkit"));
    c.args([
        "--foreground",
        "--exit-with-parent",
        "-i",
        "127.0.0.1",
        "-p",
    ])
    .arg(port.to_string())
    .args(["memory", "size=2M"]);
    let mut child = c.spawn().unwrap();
    let uri = format!("nbd://127.0.0.1:{port}/");
    let t = Instant::now();
    let d = loop {
        match NbdDevice::connect(&uri.parse().unwrap(), DeviceRole::Backing) {
            Ok(d) => break d,
            Err(e) if t.elapsed() > Duration::from_secs(30) => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    write(&d, 1, pattern(4, 1024), true);
    assert_eq!(read(&d, 1, 1024), pattern(4, 1024));
    drop(d);
    let _ = child.kill();
    let _ = child.wait();
    let _ = dir;
}

/// Not a benchmark suite, one number: 4 KiB random reads at queue depth 32 for a second.
#[test]
fn qd32_random_reads_against_nbdkit_memory() {
    let dir = tempfile::tempdir().unwrap();
    let kit = NbdServer::nbdkit(dir.path(), "mem", &["memory", "size=256M"]);
    let d = Arc::new(connect(&kit.uri(""), DeviceRole::Backing));
    let blocks = d.size_sectors() / 8;
    let (tx, rx) = mpsc::channel::<Outcome>();
    let mut x = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % blocks
    };
    let submit = |d: &NbdDevice, b: u64| {
        let tx = tx.clone();
        d.submit(
            NbdReq::Read {
                sector: b * 8,
                len: 4096,
            },
            Box::new(move |r| tx.send(r).unwrap()),
        );
    };
    for _ in 0..32 {
        submit(&d, next());
    }
    let t = Instant::now();
    let mut done = 0u64;
    while t.elapsed() < Duration::from_secs(1) {
        let r = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(r.unwrap().unwrap().len(), 4096);
        done += 1;
        submit(&d, next());
    }
    let secs = t.elapsed().as_secs_f64();
    for _ in 0..32 {
        rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
    }
    eprintln!(
        "NbdDevice, nbdkit memory, 4 KiB random reads at QD32: {:.0} IOPS ({:.0} MiB/s)",
        done as f64 / secs,
        done as f64 * 4096.0 / secs / (1 << 20) as f64
    );
}
