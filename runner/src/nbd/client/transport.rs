//! The connection's two threads and what they share. The writer thread sends queued pieces
//! while the window has room (requests and bytes in flight); the reader thread reads replies,
//! matches them to pieces by handle, and completes each piece into its request (`Joint`),
//! which calls the caller's `done` when its last piece is in. Only the reader writes nothing:
//! a reader that could block writing to a server that is itself blocked writing replies would
//! deadlock the connection.
//!
//! Failure: any transport error, stall or protocol violation makes the device dead. The first
//! cause is kept; the reader then fails every queued and in-flight piece with it, and `enqueue`
//! refuses everything after, so no request ever waits for a reply that cannot come.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use engine::IoError;

use super::sock::Sock;
use super::wire;
use super::{Access, Payload};
use crate::nbd::proto::{Request, CMD_DISC, CMD_FLUSH, CMD_READ, CMD_TRIM, CMD_WRITE, ESHUTDOWN};

/// What a request ends with: a read's data, or nothing.
pub type Outcome = Result<Option<Vec<u8>>, IoError>;
/// Called once with a request's outcome.
pub type Done = Box<dyn FnOnce(Outcome) + Send>;

/// How often blocked socket calls wake to look for death and stalls.
pub const TICK: Duration = Duration::from_millis(250);
/// Payloads up to this size are copied into the batch buffer with their headers (one send
/// for many small requests); larger ones are sent from where they are.
const COALESCE_BYTES: usize = 64 << 10;

/// One request as submitted: its pieces complete into it.
pub struct Joint {
    op: Access,
    sector: u64,
    sectors: u64,
    inner: Mutex<JointInner>,
}

struct JointInner {
    remaining: usize,
    /// A read's data: assembled here when the read was split, else the one piece's buffer.
    data: Option<Vec<u8>>,
    error: Option<String>,
    done: Option<Done>,
    /// A FUA write to a server without FUA: flush once every piece is written.
    flush_after: bool,
}

impl Joint {
    /// `split_read_len`: the whole length of a read of several pieces (assembled here).
    pub fn new(
        op: Access,
        sector: u64,
        sectors: u64,
        pieces: usize,
        split_read_len: Option<usize>,
        flush_after: bool,
        done: Done,
    ) -> Arc<Joint> {
        Arc::new(Joint {
            op,
            sector,
            sectors,
            inner: Mutex::new(JointInner {
                remaining: pieces,
                data: split_read_len.map(|n| vec![0u8; n]),
                error: None,
                done: Some(done),
                flush_after,
            }),
        })
    }

    /// Fails the request before any piece of it was queued.
    pub fn fail_now(&self, why: String) {
        let done = self.inner.lock().expect("joint lock").done.take();
        if let Some(done) = done {
            done(Err(IoError::new(self.op, self.sector, self.sectors, why)));
        }
    }
}

/// A piece of a request as it goes on the wire (at most the server's maximum payload).
pub struct Piece {
    pub kind: u16,
    pub flags: u16,
    pub offset: u64,
    pub len: u32,
    /// A write's data: the request's buffer and where this piece starts in it.
    pub payload: Option<(Arc<dyn Payload>, usize)>,
    pub joint: Arc<Joint>,
    /// Where this piece's bytes start within the request (reads of several pieces).
    pub at: usize,
}

impl Piece {
    /// What this piece counts against the byte window.
    fn cost(&self) -> u64 {
        if matches!(self.kind, CMD_READ | CMD_WRITE) {
            self.len as u64
        } else {
            0
        }
    }
}

struct Pending {
    kind: u16,
    offset: u64,
    len: u32,
    cost: u64,
    joint: Arc<Joint>,
    at: usize,
}

struct State {
    queue: VecDeque<Piece>,
    in_flight: HashMap<u64, Pending>,
    in_flight_bytes: u64,
    next_handle: u64,
    dead: Option<String>,
    closing: bool,
    /// When the window last went from empty to busy: a stall is measured from the later of
    /// this and the last byte received.
    busy_since: Instant,
    /// Time with something in flight, up to the last time the window went empty.
    busy_ns: u64,
}

pub struct Shared {
    /// "backing device nbd://…", the start of every error.
    pub label: String,
    state: Mutex<State>,
    /// The writer waits here for pieces and window room (and for the end).
    send_cv: Condvar,
    /// Submitters wait here for queue room.
    room_cv: Condvar,
    /// A handle on the socket for shutting it down (which wakes both threads).
    sock: Sock,
    pub reader: OnceLock<ThreadId>,
    window: usize,
    window_bytes: u64,
    reply_timeout: Duration,
}

fn describe(kind: u16, offset: u64, len: u32) -> String {
    let name = match kind {
        CMD_READ => "READ",
        CMD_WRITE => "WRITE",
        CMD_FLUSH => "FLUSH",
        CMD_TRIM => "TRIM",
        _ => "a command",
    };
    if kind == CMD_FLUSH {
        name.to_string()
    } else {
        format!("{name} of {len} bytes at offset {offset}")
    }
}

enum ReadEnd {
    Eof,
    Io(io::Error),
    Stalled,
    Dead,
}

impl Shared {
    pub fn new(
        label: String,
        sock: Sock,
        window: usize,
        window_bytes: u64,
        reply_timeout: Duration,
    ) -> Shared {
        Shared {
            label,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                in_flight: HashMap::new(),
                in_flight_bytes: 0,
                next_handle: 1,
                dead: None,
                closing: false,
                busy_since: Instant::now(),
                busy_ns: 0,
            }),
            send_cv: Condvar::new(),
            room_cv: Condvar::new(),
            sock,
            reader: OnceLock::new(),
            window: window.max(1),
            window_bytes,
            reply_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a thread panicked holding it: a broken invariant.
        self.state.lock().expect("nbd client state lock")
    }

    pub fn dead(&self) -> Option<String> {
        self.lock().dead.clone()
    }

    /// Nanoseconds with at least one piece in flight.
    pub fn busy_ns(&self) -> u64 {
        let st = self.lock();
        let now = if st.in_flight.is_empty() {
            0
        } else {
            st.busy_since.elapsed().as_nanos() as u64
        };
        st.busy_ns + now
    }

    /// Queues a request's pieces, all or none. With `may_block`, waits while the queue holds
    /// a window's worth of pieces (back-pressure); the reader thread never waits (a `done`
    /// that submits must not wait for the thread that would make room). `Err`: the device is
    /// dead, nothing was queued.
    pub fn enqueue(&self, pieces: Vec<Piece>, may_block: bool) -> Result<(), String> {
        let mut st = self.lock();
        while may_block && st.dead.is_none() && st.queue.len() >= self.window {
            st = self.room_cv.wait(st).expect("nbd client state lock");
        }
        if let Some(cause) = &st.dead {
            return Err(format!("{}: the connection is dead: {cause}", self.label));
        }
        st.queue.extend(pieces);
        drop(st);
        self.send_cv.notify_one();
        Ok(())
    }

    /// Records the first cause of death and shuts the socket, which wakes the reader (which
    /// then fails everything outstanding).
    fn note_death(&self, cause: String) {
        let mut st = self.lock();
        if st.dead.is_none() {
            st.dead = Some(cause);
        }
        drop(st);
        self.sock.shutdown(Shutdown::Both);
        self.send_cv.notify_all();
        self.room_cv.notify_all();
    }

    /// The reader's end after a failure: every queued and in-flight piece fails with the cause.
    fn kill(&self, cause: String) {
        self.note_death(cause);
        let (cause, queued, in_flight) = {
            let mut st = self.lock();
            st.in_flight_bytes = 0;
            if !st.in_flight.is_empty() {
                st.busy_ns += st.busy_since.elapsed().as_nanos() as u64;
            }
            (
                st.dead.clone().unwrap_or_default(),
                std::mem::take(&mut st.queue),
                std::mem::take(&mut st.in_flight),
            )
        };
        let why = format!("{}: the connection is dead: {cause}", self.label);
        for p in queued {
            self.finish(&p.joint, p.at, Err(why.clone()));
        }
        for (_, p) in in_flight {
            self.finish(&p.joint, p.at, Err(why.clone()));
        }
    }

    /// Completes one piece into its request; the last one calls `done` (or, for an emulated
    /// FUA write, queues the flush that completes it).
    fn finish(&self, joint: &Arc<Joint>, at: usize, result: Result<Option<Vec<u8>>, String>) {
        let mut j = joint.inner.lock().expect("joint lock");
        match result {
            Err(e) => {
                j.error.get_or_insert(e);
            }
            Ok(Some(buf)) => match j.data.as_mut() {
                Some(whole) => whole[at..at + buf.len()].copy_from_slice(&buf),
                None => j.data = Some(buf),
            },
            Ok(None) => {}
        }
        j.remaining -= 1;
        if j.remaining > 0 {
            return;
        }
        if j.flush_after && j.error.is_none() {
            j.flush_after = false;
            j.remaining = 1;
            drop(j);
            let flush = Piece {
                kind: CMD_FLUSH,
                flags: 0,
                offset: 0,
                len: 0,
                payload: None,
                joint: joint.clone(),
                at: 0,
            };
            if let Err(why) = self.enqueue(vec![flush], false) {
                self.finish(joint, 0, Err(why));
            }
            return;
        }
        let done = j.done.take();
        let outcome = match j.error.take() {
            Some(e) => Err(IoError::new(joint.op, joint.sector, joint.sectors, e)),
            None => Ok(j.data.take()),
        };
        drop(j);
        if let Some(done) = done {
            done(outcome);
        }
    }

    /// Ends the connection once everything queued has been answered: the writer then sends
    /// `NBD_CMD_DISC`.
    pub fn close(&self) {
        self.lock().closing = true;
        self.send_cv.notify_all();
    }

    /// Wakes the reader after the writer finished (it exits on end-of-file once closing).
    pub fn shut_socket(&self) {
        self.sock.shutdown(Shutdown::Both);
    }

    /// Takes what the window admits, in queue order; `None` when the writer is done.
    fn next_batch(&self) -> Option<Vec<(u64, Piece)>> {
        let mut st = self.lock();
        loop {
            if st.dead.is_some() {
                return None;
            }
            let admits = |st: &State, p: &Piece| {
                st.in_flight.len() < self.window
                    && (st.in_flight.is_empty()
                        || st.in_flight_bytes + p.cost() <= self.window_bytes)
            };
            if st.queue.front().is_some_and(|p| admits(&st, p)) {
                if st.in_flight.is_empty() {
                    st.busy_since = Instant::now();
                }
                let mut batch = Vec::new();
                while let Some(p) = st.queue.front() {
                    if !admits(&st, p) {
                        break;
                    }
                    let p = st.queue.pop_front().expect("front exists");
                    let handle = st.next_handle;
                    st.next_handle += 1;
                    st.in_flight_bytes += p.cost();
                    st.in_flight.insert(
                        handle,
                        Pending {
                            kind: p.kind,
                            offset: p.offset,
                            len: p.len,
                            cost: p.cost(),
                            joint: p.joint.clone(),
                            at: p.at,
                        },
                    );
                    batch.push((handle, p));
                }
                drop(st);
                self.room_cv.notify_all();
                return Some(batch);
            }
            if st.closing && st.queue.is_empty() && st.in_flight.is_empty() {
                return Some(Vec::new());
            }
            st = self.send_cv.wait(st).expect("nbd client state lock");
        }
    }

    /// Sends all of `buf`, waking every tick to give up if the device died or the server
    /// has taken nothing for the reply timeout.
    fn write_full(&self, sock: &mut Sock, mut buf: &[u8]) -> Result<(), String> {
        let mut last = Instant::now();
        while !buf.is_empty() {
            match sock.write(buf) {
                Ok(0) => return Err("the connection takes no more data".into()),
                Ok(n) => {
                    buf = &buf[n..];
                    last = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(cause) = self.dead() {
                        return Err(cause);
                    }
                    if last.elapsed() > self.reply_timeout {
                        return Err(format!(
                            "the server took no data for {:?}",
                            self.reply_timeout
                        ));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("sending to the server failed: {e}")),
            }
        }
        Ok(())
    }

    /// The writer thread.
    pub fn writer_loop(&self, mut sock: Sock) {
        let mut out: Vec<u8> = Vec::with_capacity(256 << 10);
        while let Some(batch) = self.next_batch() {
            if batch.is_empty() {
                // Closing with nothing outstanding: the soft disconnect.
                let disc = Request {
                    flags: 0,
                    kind: CMD_DISC,
                    handle: 0,
                    offset: 0,
                    length: 0,
                };
                let _ = self.write_full(&mut sock, &wire::encode_request(&disc));
                sock.shutdown(Shutdown::Write);
                return;
            }
            out.clear();
            let mut result = Ok(());
            for (handle, p) in &batch {
                let hdr = Request {
                    flags: p.flags,
                    kind: p.kind,
                    handle: *handle,
                    offset: p.offset,
                    length: p.len,
                };
                out.extend_from_slice(&wire::encode_request(&hdr));
                if let Some((data, start)) = &p.payload {
                    let bytes = &data.bytes()[*start..*start + p.len as usize];
                    if bytes.len() <= COALESCE_BYTES {
                        out.extend_from_slice(bytes);
                    } else {
                        result = self
                            .write_full(&mut sock, &out)
                            .and_then(|()| self.write_full(&mut sock, bytes));
                        out.clear();
                        if result.is_err() {
                            break;
                        }
                    }
                }
            }
            if result.is_ok() {
                result = self.write_full(&mut sock, &out);
            }
            if let Err(cause) = result {
                self.note_death(cause);
                return;
            }
        }
    }

    /// Reads all of `buf`. At a message boundary (`mid_message` false) an idle connection
    /// may wait forever; otherwise silence for the reply timeout is a stall.
    fn read_full(
        &self,
        sock: &mut Sock,
        buf: &mut [u8],
        mid_message: bool,
        last_byte: &mut Instant,
    ) -> Result<(), ReadEnd> {
        let mut at = 0;
        while at < buf.len() {
            match sock.read(&mut buf[at..]) {
                Ok(0) => return Err(ReadEnd::Eof),
                Ok(n) => {
                    at += n;
                    *last_byte = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let st = self.lock();
                    if st.dead.is_some() {
                        return Err(ReadEnd::Dead);
                    }
                    let waiting = mid_message || at > 0 || !st.in_flight.is_empty();
                    let since = st.busy_since.max(*last_byte);
                    if waiting && since.elapsed() > self.reply_timeout {
                        return Err(ReadEnd::Stalled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ReadEnd::Io(e)),
            }
        }
        Ok(())
    }

    fn end_cause(&self, end: ReadEnd) -> String {
        match end {
            ReadEnd::Eof => "the server closed the connection".into(),
            ReadEnd::Io(e) => format!("reading from the server failed: {e}"),
            ReadEnd::Stalled => {
                let n = self.lock().in_flight.len();
                format!(
                    "no reply from the server for {:?} with {n} request(s) in flight",
                    self.reply_timeout
                )
            }
            ReadEnd::Dead => "the connection was shut down".into(),
        }
    }

    /// The reader thread: runs until the connection ends.
    pub fn reader_loop(&self, mut sock: Sock) {
        let mut last_byte = Instant::now();
        let mut hdr = [0u8; wire::REPLY_HEADER_LEN];
        loop {
            if let Err(end) = self.read_full(&mut sock, &mut hdr, false, &mut last_byte) {
                let st = self.lock();
                let clean = matches!(end, ReadEnd::Eof | ReadEnd::Dead)
                    && st.closing
                    && st.dead.is_none()
                    && st.in_flight.is_empty()
                    && st.queue.is_empty();
                drop(st);
                if !clean {
                    self.kill(self.end_cause(end));
                }
                return;
            }
            let (errno, handle) = match wire::parse_reply(&hdr) {
                Ok(x) => x,
                Err(e) => return self.kill(format!("protocol violation: {e}")),
            };
            // Looked up, not removed, until its data is in: a close waits for it.
            let found = self.lock().in_flight.get(&handle).map(|p| (p.kind, p.len));
            let Some((kind, len)) = found else {
                return self.kill(format!(
                    "protocol violation: a reply for handle {handle:#x}, which is not in flight"
                ));
            };
            let data = if errno == 0 && kind == CMD_READ {
                let mut buf = vec![0u8; len as usize];
                if let Err(end) = self.read_full(&mut sock, &mut buf, true, &mut last_byte) {
                    return self.kill(self.end_cause(end));
                }
                Some(buf)
            } else {
                None
            };
            let p = {
                let mut st = self.lock();
                let p = st
                    .in_flight
                    .remove(&handle)
                    .expect("only the reader removes");
                st.in_flight_bytes -= p.cost;
                if st.in_flight.is_empty() {
                    st.busy_ns += st.busy_since.elapsed().as_nanos() as u64;
                }
                p
            };
            self.send_cv.notify_one();
            let result = if errno == 0 {
                Ok(data)
            } else {
                Err(format!(
                    "{}: the server replied {} to {}",
                    self.label,
                    wire::errno_name(errno),
                    describe(p.kind, p.offset, p.len)
                ))
            };
            self.finish(&p.joint, p.at, result);
            if errno == ESHUTDOWN {
                // The spec wants the client gone; nothing more will be served.
                return self.kill("the server is shutting down (ESHUTDOWN)".into());
            }
        }
    }
}
