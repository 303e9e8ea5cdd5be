//! NBD: `proto` is the pure protocol layer (bytes in, bytes out, never panics); `conn` runs one
//! client connection over a socket and hands its requests to the engine thread.

pub mod conn;
pub mod proto;
