//! What the engine thread needs of the cache: the engine's state-machine interface behind a
//! trait, so the loom tests can put a small fake with the same durability contract behind the
//! runner's real handoff code. `engine::Engine` is the production implementation.

use engine::{Engine, Error, IoOp, IoResult, OpId, Reply, ReqId, Request, Status};

/// The cache as the engine thread drives it: requests and completions in, operations and
/// replies out (docs/DESIGN.md, "I/O as data"). Every method runs on the engine thread only.
pub trait Machine {
    fn submit(&mut self, id: ReqId, req: Request);
    fn poll_io(&mut self) -> Option<IoOp>;
    fn complete(&mut self, op: OpId, result: IoResult);
    fn poll_reply(&mut self) -> Option<Reply>;
    /// Gives the cache the time (monotonic milliseconds).
    fn tick(&mut self, now_ms: u64);
    /// The writeback modulator's input: the backing device's load, in percent.
    fn set_backing_load(&mut self, percent: u8);
    /// Starts every background step that is due.
    fn start_due_steps(&mut self);
    fn status(&self) -> Status;
    fn message(&mut self, msg: &str) -> Result<(), Error>;
    /// Why the cache is dead, if it is.
    fn dead_cause(&self) -> Option<String>;
    /// Clean shutdown: everything acknowledged made durable and recorded, as operations.
    fn begin_shutdown(&mut self);
    fn shutdown_complete(&self) -> bool;
    /// Operations handed out and not completed.
    fn in_flight(&self) -> usize;
    /// What the cache is waiting for, in one line (for the operator when requests stall).
    fn waiting_for(&self) -> String {
        String::new()
    }
}

impl Machine for Engine {
    fn submit(&mut self, id: ReqId, req: Request) {
        Engine::submit(self, id, req)
    }
    fn poll_io(&mut self) -> Option<IoOp> {
        Engine::poll_io(self)
    }
    fn complete(&mut self, op: OpId, result: IoResult) {
        Engine::complete(self, op, result)
    }
    fn poll_reply(&mut self) -> Option<Reply> {
        Engine::poll_reply(self)
    }
    fn tick(&mut self, now_ms: u64) {
        Engine::tick(self, now_ms)
    }
    fn set_backing_load(&mut self, percent: u8) {
        Engine::set_backing_load(self, percent)
    }
    fn start_due_steps(&mut self) {
        Engine::start_due_steps(self);
    }
    fn status(&self) -> Status {
        Engine::status(self)
    }
    fn message(&mut self, msg: &str) -> Result<(), Error> {
        Engine::message(self, msg)
    }
    fn dead_cause(&self) -> Option<String> {
        // `is_dead` first: building a full status after every event would be wasted work.
        self.is_dead().then(|| self.status().dead).flatten()
    }
    fn begin_shutdown(&mut self) {
        Engine::begin_shutdown(self)
    }
    fn shutdown_complete(&self) -> bool {
        Engine::shutdown_complete(self)
    }
    fn in_flight(&self) -> usize {
        Engine::in_flight(self)
    }
    fn waiting_for(&self) -> String {
        format!("{} in flight; {}", self.in_flight(), self.shutdown_state())
    }
}
