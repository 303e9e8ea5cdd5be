//! The client's handshake: fixed newstyle, `NBD_OPT_GO` asking for the block size constraints,
//! and `NBD_OPT_EXPORT_NAME` when the server does not know `GO` (or speaks only plain newstyle).
//! Bounded: at most `MAX_REPLIES` replies to one option, each at most
//! `wire::MAX_OPTION_REPLY_LEN` bytes; the caller sets the socket's timeouts.

use std::io::{self, Read, Write};

use thiserror::Error;

use super::wire::{self, BlockSizes, Info, WireError};
use crate::nbd::proto::{
    FLAG_C_FIXED_NEWSTYLE, FLAG_C_NO_ZEROES, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, OPT_ABORT,
    OPT_EXPORT_NAME, OPT_GO, REP_ACK, REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_INFO,
};

/// Replies one option may get before the server is deemed to babble (a `GO` gets a handful
/// of `NBD_REP_INFO`s and a final reply).
pub const MAX_REPLIES: usize = 64;

/// What the handshake agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub size_bytes: u64,
    pub flags: u16,
    pub sizes: BlockSizes,
    /// `NBD_OPT_GO` (false: the `NBD_OPT_EXPORT_NAME` fallback, default size constraints).
    pub go: bool,
}

#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Wire(#[from] WireError),
    #[error("the server has no export named {name:?}{}", message_suffix(.message))]
    UnknownExport { name: String, message: String },
    #[error("the server requires TLS, which wbcache's NBD client does not support")]
    TlsRequired,
    #[error("the server refused the export with {reply}{}", message_suffix(.message))]
    Refused {
        reply: &'static str,
        message: String,
    },
    #[error("the server closed the connection after NBD_OPT_EXPORT_NAME: no export named {0:?}?")]
    ExportNameRefused(String),
    #[error("the server did not answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("more than {MAX_REPLIES} replies to one option")]
    TooManyReplies,
    #[error("the server accepted the export without telling its size (no NBD_INFO_EXPORT)")]
    NoExportInfo,
}

fn message_suffix(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(": {m}")
    }
}

/// An option reply's message, for errors: printable text only, bounded.
fn message_text(data: &[u8]) -> String {
    String::from_utf8_lossy(data)
        .chars()
        .filter(|c| !c.is_control())
        .take(256)
        .collect()
}

fn eof_is(e: io::Error, what: impl FnOnce() -> HandshakeError) -> HandshakeError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        what()
    } else {
        HandshakeError::Io(e)
    }
}

/// Runs the handshake over `s` for the export `name`.
pub fn run<S: Read + Write>(s: &mut S, name: &str) -> Result<Negotiated, HandshakeError> {
    let mut greeting = [0u8; wire::GREETING_LEN];
    s.read_exact(&mut greeting)?;
    let hflags = wire::parse_greeting(&greeting)?;
    let fixed = hflags & FLAG_FIXED_NEWSTYLE != 0;
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let mut cflags = 0u32;
    if fixed {
        cflags |= FLAG_C_FIXED_NEWSTYLE;
    }
    if no_zeroes {
        cflags |= FLAG_C_NO_ZEROES;
    }
    s.write_all(&cflags.to_be_bytes())?;
    if fixed {
        if let Some(n) = go(s, name)? {
            return Ok(n);
        }
    }
    export_name(s, name, no_zeroes)
}

/// `NBD_OPT_GO`; `None` if the server does not know it.
fn go<S: Read + Write>(s: &mut S, name: &str) -> Result<Option<Negotiated>, HandshakeError> {
    s.write_all(&wire::option_request(OPT_GO, &wire::go_payload(name)))?;
    let mut export = None;
    let mut sizes = BlockSizes::DEFAULT;
    for _ in 0..MAX_REPLIES {
        let mut hdr = [0u8; wire::OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut hdr)?;
        let rep = wire::parse_option_reply(&hdr, OPT_GO)?;
        let mut data = vec![0u8; rep.len as usize];
        s.read_exact(&mut data)?;
        match rep.reply {
            REP_INFO => match wire::parse_info(&data)? {
                Info::Export { size, flags } => export = Some((size, flags)),
                Info::BlockSize(b) => sizes = b,
                Info::Other(_) => {}
            },
            REP_ACK => {
                let (size_bytes, flags) = export.ok_or(HandshakeError::NoExportInfo)?;
                return Ok(Some(Negotiated {
                    size_bytes,
                    flags,
                    sizes,
                    go: true,
                }));
            }
            REP_ERR_UNSUP => return Ok(None),
            reply => {
                // The session is over: end it politely (a soft disconnect), best effort.
                let _ = s.write_all(&wire::option_request(OPT_ABORT, &[]));
                let message = message_text(&data);
                return Err(match reply {
                    REP_ERR_UNKNOWN => HandshakeError::UnknownExport {
                        name: name.to_string(),
                        message,
                    },
                    wire::REP_ERR_TLS_REQD => HandshakeError::TlsRequired,
                    r if r & (1 << 31) != 0 => HandshakeError::Refused {
                        reply: wire::reply_name(r),
                        message,
                    },
                    r => HandshakeError::Wire(WireError::UnexpectedReply(r)),
                });
            }
        }
    }
    Err(HandshakeError::TooManyReplies)
}

/// `NBD_OPT_EXPORT_NAME`: the server answers with size and flags, or hangs up.
fn export_name<S: Read + Write>(
    s: &mut S,
    name: &str,
    no_zeroes: bool,
) -> Result<Negotiated, HandshakeError> {
    s.write_all(&wire::option_request(OPT_EXPORT_NAME, name.as_bytes()))?;
    let mut b = [0u8; 10 + 124];
    let len = if no_zeroes { 10 } else { b.len() };
    s.read_exact(&mut b[..len])
        .map_err(|e| eof_is(e, || HandshakeError::ExportNameRefused(name.to_string())))?;
    Ok(Negotiated {
        size_bytes: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
        flags: u16::from_be_bytes([b[8], b[9]]),
        sizes: BlockSizes::DEFAULT,
        go: false,
    })
}
