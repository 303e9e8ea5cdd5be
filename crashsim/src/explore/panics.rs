//! A panic in the engine, in recovery or in the oracles while the explorer runs a workload or
//! checks a crash state is a finding of that state (kind `Panic`): caught, counted, shrunk and
//! printed with its replay command like any violation, and the run goes on to its summary.
//! Outside a guarded call panics behave as usual (a bug of the tester itself still aborts it).

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Inside `guarded`: the hook records the panic instead of printing it.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    /// What the hook recorded: the message and where it was raised.
    static CAUGHT: RefCell<Option<String>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                return previous(info);
            }
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            CAUGHT.with(|c| *c.borrow_mut() = Some(format!("{msg}{at}")));
        }));
    });
}

/// Runs `f`; a panic inside it comes back as `Err` with its message and location, printed
/// nowhere (the finding that carries it is).
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = GUARDED.with(|g| g.replace(true));
    let r = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    r.map_err(|_| {
        CAUGHT
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(|| "a panic".into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_comes_back_with_its_message_and_place() {
        let r: Result<(), String> = guarded(|| panic!("slot {} reused", 3));
        let e = r.unwrap_err();
        assert!(e.starts_with("slot 3 reused at "), "{e}");
        assert!(e.contains("panics.rs"), "{e}");
        assert_eq!(guarded(|| 7), Ok(7));
        // Nested: the inner catch does not unguard the outer call.
        let r = guarded(|| {
            let inner = guarded(|| panic!("inner"));
            assert!(inner.is_err());
            panic!("outer")
        });
        assert!(r.unwrap_err().starts_with("outer"));
    }
}
