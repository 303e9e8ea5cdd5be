//! A bounded, closable FIFO queue and a counting semaphore: the only blocking primitives of the
//! request path. Built on `sync::{Mutex, Condvar}` (std or loom), because loom has no bounded
//! channel and no timed receive.

use std::collections::VecDeque;
use std::time::Duration;

use crate::sync::{Condvar, Mutex, MutexGuard};

struct QueueState<T> {
    items: VecDeque<T>,
    closed: bool,
}

/// A FIFO of at most `capacity` items. `push` blocks while it is full; after `close`, `push`
/// fails and `pop` drains what is left, then reports `Closed`.
pub struct BoundedQueue<T> {
    state: Mutex<QueueState<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
}

/// The queue was closed: the item was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed<T>(pub T);

/// What a timed pop found.
#[derive(Debug, PartialEq, Eq)]
pub enum Pop<T> {
    Item(T),
    /// Nothing arrived in time (never under loom, whose condvars do not time out).
    Timeout,
    /// Closed and drained.
    Closed,
}

fn relock<G>(r: std::sync::LockResult<G>) -> G {
    // A panic while holding the lock leaves the queue itself consistent (each operation is one
    // push or pop), so a poisoned lock is still usable.
    r.unwrap_or_else(|p| p.into_inner())
}

impl<T> BoundedQueue<T> {
    pub fn new(capacity: usize) -> Self {
        assert!(
            capacity > 0,
            "a queue of capacity 0 could never pass an item"
        );
        BoundedQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::with_capacity(capacity.min(1024)),
                closed: false,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState<T>> {
        relock(self.state.lock())
    }

    /// Appends `item`, waiting while the queue is full.
    pub fn push(&self, item: T) -> Result<(), Closed<T>> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return Err(Closed(item));
            }
            if st.items.len() < self.capacity {
                st.items.push_back(item);
                drop(st);
                self.not_empty.notify_one();
                return Ok(());
            }
            st = relock(self.not_full.wait(st));
        }
    }

    fn take(&self, mut st: MutexGuard<'_, QueueState<T>>) -> Option<T> {
        let item = st.items.pop_front();
        drop(st);
        if item.is_some() {
            self.not_full.notify_one();
        }
        item
    }

    /// Takes the oldest item without waiting.
    pub fn try_pop(&self) -> Pop<T> {
        let st = self.lock();
        let closed = st.closed;
        match self.take(st) {
            Some(item) => Pop::Item(item),
            None if closed => Pop::Closed,
            None => Pop::Timeout,
        }
    }

    /// Takes up to `max` items from the front without waiting, as long as each satisfies
    /// `wanted`; stops at the first that does not (which stays first in the queue).
    pub fn pop_front_while(&self, max: usize, mut wanted: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut st = self.lock();
        let mut taken = Vec::new();
        while taken.len() < max && st.items.front().is_some_and(&mut wanted) {
            taken.extend(st.items.pop_front());
        }
        drop(st);
        if !taken.is_empty() {
            // Each taken item freed a place: every waiting pusher may go.
            self.not_full.notify_all();
        }
        taken
    }

    /// Takes the oldest item, waiting up to `timeout` for one.
    pub fn pop_timeout(&self, timeout: Duration) -> Pop<T> {
        let mut st = self.lock();
        // One wait, then a final look: a spurious wakeup only shortens the wait, which the
        // caller (a polling loop) tolerates.
        if st.items.is_empty() && !st.closed {
            st = relock(self.not_empty.wait_timeout(st, timeout)).0;
        }
        let closed = st.closed;
        match self.take(st) {
            Some(item) => Pop::Item(item),
            None if closed => Pop::Closed,
            None => Pop::Timeout,
        }
    }

    /// Takes the oldest item, waiting as long as it takes; `None` once closed and drained.
    pub fn pop(&self) -> Option<T> {
        let mut st = self.lock();
        loop {
            if !st.items.is_empty() {
                return self.take(st);
            }
            if st.closed {
                return None;
            }
            st = relock(self.not_empty.wait(st));
        }
    }

    /// Refuses further pushes and wakes every waiter; items already queued stay poppable.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A counting semaphore over `capacity` units (the runner counts bytes in flight).
pub struct Semaphore {
    available: Mutex<u64>,
    freed: Condvar,
    capacity: u64,
}

impl Semaphore {
    pub fn new(capacity: u64) -> Self {
        Semaphore {
            available: Mutex::new(capacity),
            freed: Condvar::new(),
            capacity,
        }
    }

    /// Takes `units` (at most the capacity), waiting until they are free.
    pub fn acquire(&self, units: u64) {
        let units = units.min(self.capacity);
        let mut avail = relock(self.available.lock());
        while *avail < units {
            avail = relock(self.freed.wait(avail));
        }
        *avail -= units;
    }

    /// Gives back what an `acquire(units)` took.
    pub fn release(&self, units: u64) {
        let units = units.min(self.capacity);
        let mut avail = relock(self.available.lock());
        *avail += units;
        assert!(
            *avail <= self.capacity,
            "semaphore released more than it lent"
        );
        drop(avail);
        self.freed.notify_all();
    }

    /// Waits until every unit is back: nothing is in flight.
    pub fn wait_idle(&self) {
        let mut avail = relock(self.available.lock());
        while *avail < self.capacity {
            avail = relock(self.freed.wait(avail));
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::{thread, Arc};

    #[test]
    fn queue_is_fifo_bounded_and_closable() {
        let q = Arc::new(BoundedQueue::new(2));
        q.push(1).unwrap();
        q.push(2).unwrap();
        let q2 = q.clone();
        let pusher = thread::spawn(move || q2.push(3));
        assert_eq!(q.pop(), Some(1));
        pusher.join().unwrap().unwrap();
        assert_eq!(q.len(), 2);
        q.close();
        assert_eq!(q.push(4), Err(Closed(4)));
        assert_eq!(q.try_pop(), Pop::Item(2));
        assert_eq!(q.pop_timeout(Duration::from_millis(1)), Pop::Item(3));
        assert_eq!(q.pop_timeout(Duration::from_millis(1)), Pop::Closed);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn pop_front_while_takes_a_bounded_matching_run_and_frees_room() {
        let q = Arc::new(BoundedQueue::new(6));
        for x in [2, 4, 6, 8, 1, 10] {
            q.push(x).unwrap();
        }
        let even = |x: &i32| x % 2 == 0;
        assert_eq!(q.pop_front_while(3, even), vec![2, 4, 6]);
        let q2 = q.clone();
        // Blocks until the queue has room (three places were freed above, so at once).
        thread::spawn(move || {
            q2.push(12).unwrap();
            q2.push(14).unwrap();
        })
        .join()
        .unwrap();
        assert_eq!(q.pop_front_while(10, even), vec![8], "stops at the odd one");
        assert_eq!(q.pop_front_while(10, even), vec![]);
        assert_eq!(q.try_pop(), Pop::Item(1));
        assert_eq!(q.pop_front_while(0, even), vec![], "max 0 takes nothing");
        assert_eq!(q.pop_front_while(10, even), vec![10, 12, 14]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn pop_timeout_times_out_on_an_empty_open_queue() {
        let q: BoundedQueue<u8> = BoundedQueue::new(1);
        assert_eq!(q.pop_timeout(Duration::from_millis(5)), Pop::Timeout);
    }

    #[test]
    fn semaphore_blocks_until_released() {
        let s = Arc::new(Semaphore::new(10));
        s.acquire(8);
        let s2 = s.clone();
        let t = thread::spawn(move || {
            s2.acquire(5);
            s2.release(5);
        });
        std::thread::sleep(Duration::from_millis(10));
        s.release(8);
        t.join().unwrap();
        s.acquire(100); // clamped to the capacity
        s.release(100);
        s.wait_idle();
    }
}
