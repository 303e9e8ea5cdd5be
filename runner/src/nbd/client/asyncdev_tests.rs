//! `NbdDevice` as the executor's `AsyncDevice`, against fake servers on socket pairs: the
//! engine's operations map onto requests, every `Done` completes exactly once (from the
//! reply reader), `submit` never waits, and a dead connection fails what is pending and what
//! comes after.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use engine::{IoData, IoDone, IoKind, IoOp, IoResult, OpId};

use super::tests::{handshake, memory_server, pair};
use super::*;
use crate::events::{Event, Events};
use crate::executor::{AsyncDevice, Done};
use crate::nbd::proto;

fn op(id: u64, kind: IoKind) -> IoOp {
    IoOp {
        id: OpId(id),
        role: DeviceRole::Backing,
        kind,
    }
}

/// Submits through the `AsyncDevice` face, as the executor does.
fn submit(d: &NbdDevice, events: &Arc<Events>, op: IoOp) {
    let done = Done::new(events.clone(), op.id, op.role);
    AsyncDevice::submit(d, op, done);
}

/// The next `n` completions, in arrival order.
fn completions(events: &Events, n: usize) -> Vec<(OpId, IoResult)> {
    (0..n)
        .map(|_| match events.pop_timeout(Duration::from_secs(30)) {
            Event::Done(op, r) => (op, r),
            _ => panic!("a completion was expected"),
        })
        .collect()
}

#[test]
fn operations_map_onto_requests_and_complete_once_each() {
    let (tx, rx) = mpsc::channel();
    let (d, t) = pair(NbdOptions::default(), move |s| memory_server(s, tx));
    let d = d.unwrap();
    let events = Arc::new(Events::new(8));
    assert_eq!(AsyncDevice::size_sectors(&d), 1 << 11);
    let data = IoData::new(Arc::new(vec![9u8; 8192]), 4096..8192);
    submit(
        &d,
        &events,
        op(
            1,
            IoKind::Write {
                sector: 8,
                data,
                fua: false,
            },
        ),
    );
    let mut got = completions(&events, 1);
    assert!(matches!(got.pop(), Some((OpId(1), Ok(IoDone::Write)))));
    submit(&d, &events, op(2, IoKind::Flush));
    let fua = IoData::from_vec(vec![5u8; 512]);
    submit(
        &d,
        &events,
        op(
            3,
            IoKind::Write {
                sector: 100,
                data: fua,
                fua: true,
            },
        ),
    );
    let mut got = completions(&events, 2);
    got.sort_by_key(|(op, _)| *op);
    assert!(matches!(got[0], (OpId(2), Ok(IoDone::Flush))));
    assert!(matches!(got[1], (OpId(3), Ok(IoDone::Write))));
    submit(
        &d,
        &events,
        op(
            4,
            IoKind::Read {
                sector: 8,
                len: 4096,
            },
        ),
    );
    match completions(&events, 1).pop() {
        Some((OpId(4), Ok(IoDone::Read(b)))) => assert_eq!(b, vec![9u8; 4096]),
        other => panic!("{other:?}"),
    }
    // Out of range: refused at once, with an error, still through `Done`.
    submit(
        &d,
        &events,
        op(
            5,
            IoKind::Read {
                sector: 1 << 11,
                len: 512,
            },
        ),
    );
    let (id, r) = completions(&events, 1).pop().unwrap();
    assert_eq!(id, OpId(5));
    assert!(r.unwrap_err().detail.contains("beyond device end"));
    assert!(AsyncDevice::busy_ns(&d) > 0, "time with requests in flight");
    drop(d);
    t.join().unwrap();
    use proto::{CMD_DISC, CMD_FLUSH, CMD_READ, CMD_WRITE};
    // The FUA write carries the flag (our server offers FUA): no extra FLUSH.
    assert_eq!(
        rx.recv().unwrap(),
        vec![CMD_WRITE, CMD_FLUSH, CMD_WRITE, CMD_READ, CMD_DISC]
    );
    assert!(events.try_pop().is_none(), "nothing completes twice");
}

#[test]
fn submit_never_waits_and_a_dead_connection_fails_pending_and_later_ops() {
    // A server that takes requests and never answers, until told to hang up.
    let (hang_up, hang_up_rx) = mpsc::channel::<()>();
    let (d, t) = pair(
        NbdOptions {
            window: 1,
            ..NbdOptions::default()
        },
        move |mut s: UnixStream| {
            handshake(&mut s);
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut buf = [0u8; 4096];
            while hang_up_rx.try_recv().is_err() {
                let _ = s.read(&mut buf);
            }
        },
    );
    let d = d.unwrap();
    let events = Arc::new(Events::new(8));
    // Far more than the window and the blocking submit's queue (1 + 1): none may wait.
    let n = 200u64;
    let started = Instant::now();
    for i in 0..n {
        let kind = match i % 3 {
            0 => IoKind::Read {
                sector: i,
                len: 512,
            },
            1 => IoKind::Write {
                sector: i,
                data: IoData::from_vec(vec![1u8; 512]),
                fua: i % 2 == 0,
            },
            _ => IoKind::Flush,
        };
        submit(&d, &events, op(i, kind));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "submit returned at once"
    );
    assert!(events.try_pop().is_none(), "nothing answered yet");
    hang_up.send(()).unwrap();
    t.join().unwrap();
    let mut got = completions(&events, n as usize);
    got.sort_by_key(|(op, _)| *op);
    for (i, (id, r)) in got.into_iter().enumerate() {
        assert_eq!(id, OpId(i as u64), "each op completes exactly once");
        let e = r.expect_err("the connection died under it");
        assert!(e.detail.contains("the connection is dead"), "{e}");
    }
    assert!(d.dead().is_some());
    // Later operations fail at once, without a round trip.
    submit(&d, &events, op(n, IoKind::Flush));
    let (id, r) = completions(&events, 1).pop().unwrap();
    assert_eq!(id, OpId(n));
    assert!(r.unwrap_err().detail.contains("the connection is dead"));
    assert!(events.try_pop().is_none(), "nothing completes twice");
}
