//! NBD: `proto` is the pure protocol layer (bytes in, bytes out, never panics); `conn` runs one
//! client connection over a socket and hands its requests to the engine thread; `client` is
//! the other side, a block device on someone else's NBD server (`NbdDevice`).

pub mod client;
pub mod conn;
pub mod proto;
