//! The client's half of the NBD wire format as pure functions over bytes (no sockets; nothing
//! here panics on any input, which `tests.rs` checks on garbage). The constants both sides use
//! and the request layout come from `proto` (the server side); the values here are the ones
//! only a client needs: what a server may answer that our server never sends.

use thiserror::Error;

use crate::nbd::proto::{
    self, Request, EINVAL, EIO, ENOSPC, EOVERFLOW, ESHUTDOWN, IHAVEOPT, INFO_BLOCK_SIZE,
    INFO_EXPORT, NBDMAGIC, OPTION_REPLY_MAGIC, REP_ACK, REP_ERR_INVALID, REP_ERR_UNKNOWN,
    REP_ERR_UNSUP, REP_INFO, REP_SERVER, REQUEST_LEN, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
};

/// The second magic of an oldstyle greeting (`cliserv_magic`).
pub const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
/// Structured-reply chunks: never negotiated by this client, so one on the wire is a
/// protocol violation (recognised only to say so).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;
/// Extended-header replies: likewise never negotiated.
pub const EXTENDED_REPLY_MAGIC: u32 = 0x6e8a_278c;

/// Transmission flag: the export refuses writes.
pub const FLAG_READ_ONLY: u16 = 1 << 1;

pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_PLATFORM: u32 = (1 << 31) + 4;
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) + 8;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

pub const EPERM: u32 = 1;
pub const ENOMEM: u32 = 12;
pub const ENOTSUP: u32 = 95;

/// Length of a simple reply header.
pub const REPLY_HEADER_LEN: usize = 16;
/// Length of an option reply header.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Length of the server's greeting (newstyle: two magics and the handshake flags).
pub const GREETING_LEN: usize = 18;
/// Longest option reply payload read: an informational reply is at most 14 bytes and an error
/// message a string of at most 4096 bytes (the spec's limit on strings); a little room for an
/// `NBD_INFO_NAME`/`DESCRIPTION` of a long string. Anything longer is a protocol violation,
/// never buffered.
pub const MAX_OPTION_REPLY_LEN: u32 = 4096 + 64;

/// The server broke the protocol (or is not an NBD server).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("bad magic {0:#x} (not an NBD server?)")]
    BadMagic(u64),
    #[error("the server speaks only the oldstyle handshake, which wbcache does not support")]
    Oldstyle,
    #[error("a structured reply arrived, but structured replies were never negotiated")]
    Structured,
    #[error("an option reply of {len} bytes, more than the {MAX_OPTION_REPLY_LEN} allowed")]
    OptionReplyTooLong { len: u32 },
    #[error("a reply to option {got} while option {want} was outstanding")]
    WrongOption { want: u32, got: u32 },
    #[error("option reply type {0:#x} ({name}) where it has no meaning", name = reply_name(*.0))]
    UnexpectedReply(u32),
    #[error("malformed NBD_REP_INFO ({0})")]
    BadInfo(&'static str),
    #[error("invalid block size constraints: {0}")]
    BadBlockSize(String),
    #[error("truncated {0}")]
    Truncated(&'static str),
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The server's newstyle greeting: its handshake flags.
pub fn parse_greeting(b: &[u8]) -> Result<u16, WireError> {
    let t = WireError::Truncated("greeting");
    let magic = be_u64(b, 0).ok_or(t.clone())?;
    if magic != NBDMAGIC {
        return Err(WireError::BadMagic(magic));
    }
    match be_u64(b, 8).ok_or(t.clone())? {
        IHAVEOPT => be_u16(b, 16).ok_or(t),
        OLDSTYLE_MAGIC => Err(WireError::Oldstyle),
        other => Err(WireError::BadMagic(other)),
    }
}

/// An option request: header and payload.
pub fn option_request(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(proto::OPTION_HEADER_LEN + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The payload of `NBD_OPT_GO`/`INFO` for `name`, asking for the block size constraints (which
/// commits this client to honour them, as it does).
pub fn go_payload(name: &str) -> Vec<u8> {
    let mut d = Vec::with_capacity(4 + name.len() + 4);
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d
}

/// An option reply header: (option, reply type, payload length).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionReply {
    pub option: u32,
    pub reply: u32,
    pub len: u32,
}

/// Parses an option reply header to `want` (the one option outstanding).
pub fn parse_option_reply(b: &[u8], want: u32) -> Result<OptionReply, WireError> {
    let t = WireError::Truncated("option reply header");
    let magic = be_u64(b, 0).ok_or(t.clone())?;
    if magic != OPTION_REPLY_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let option = be_u32(b, 8).ok_or(t.clone())?;
    let reply = be_u32(b, 12).ok_or(t.clone())?;
    let len = be_u32(b, 16).ok_or(t)?;
    if option != want {
        return Err(WireError::WrongOption { want, got: option });
    }
    if len > MAX_OPTION_REPLY_LEN {
        return Err(WireError::OptionReplyTooLong { len });
    }
    Ok(OptionReply { option, reply, len })
}

/// What an `NBD_REP_INFO` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Info {
    Export {
        size: u64,
        flags: u16,
    },
    BlockSize(BlockSizes),
    /// A type we did not ask for or do not know: ignored, as the spec requires.
    Other(u16),
}

/// Parses an `NBD_REP_INFO` payload.
pub fn parse_info(d: &[u8]) -> Result<Info, WireError> {
    let kind = be_u16(d, 0).ok_or(WireError::BadInfo("no type"))?;
    match kind {
        INFO_EXPORT => {
            if d.len() != 12 {
                return Err(WireError::BadInfo("NBD_INFO_EXPORT is not 12 bytes"));
            }
            Ok(Info::Export {
                size: be_u64(d, 2).ok_or(WireError::BadInfo("size"))?,
                flags: be_u16(d, 10).ok_or(WireError::BadInfo("flags"))?,
            })
        }
        INFO_BLOCK_SIZE => {
            if d.len() != 14 {
                return Err(WireError::BadInfo("NBD_INFO_BLOCK_SIZE is not 14 bytes"));
            }
            let get = |at| be_u32(d, at).ok_or(WireError::BadInfo("block size"));
            BlockSizes::new(get(2)?, get(6)?, get(10)?).map(Info::BlockSize)
        }
        other => Ok(Info::Other(other)),
    }
}

/// The export's size constraints (spec, "Size constraints").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSizes {
    pub min: u32,
    pub preferred: u32,
    /// Maximum payload; `0xffffffff` means no fixed limit.
    pub max: u32,
}

impl BlockSizes {
    /// What applies when the server advertises nothing: minimum 1, preferred 4096, and the
    /// 32 MiB payload the spec tells interoperable clients to stay within.
    pub const DEFAULT: BlockSizes = BlockSizes {
        min: 1,
        preferred: 4096,
        max: proto::MAX_PAYLOAD,
    };

    /// Checks the spec's rules: minimum a power of 2 up to 64 KiB; preferred a power of 2 at
    /// least max(minimum, 512); maximum at least the preferred size.
    pub fn new(min: u32, preferred: u32, max: u32) -> Result<Self, WireError> {
        let bad = |why: &str| {
            Err(WireError::BadBlockSize(format!(
                "minimum {min}, preferred {preferred}, maximum {max}: {why}"
            )))
        };
        if !min.is_power_of_two() || min > 1 << 16 {
            return bad("the minimum must be a power of 2 no larger than 65536");
        }
        if !preferred.is_power_of_two() || preferred < min.max(512) {
            return bad("the preferred size must be a power of 2 at least max(minimum, 512)");
        }
        if max < preferred {
            return bad("the maximum must be at least the preferred size");
        }
        Ok(BlockSizes {
            min,
            preferred,
            max,
        })
    }
}

/// A request header as the client sends it (the inverse of `proto::parse_request`).
pub fn encode_request(r: &Request) -> [u8; REQUEST_LEN] {
    let mut b = [0u8; REQUEST_LEN];
    b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&r.flags.to_be_bytes());
    b[6..8].copy_from_slice(&r.kind.to_be_bytes());
    b[8..16].copy_from_slice(&r.handle.to_be_bytes());
    b[16..24].copy_from_slice(&r.offset.to_be_bytes());
    b[24..28].copy_from_slice(&r.length.to_be_bytes());
    b
}

/// A simple reply header (the inverse of `proto::simple_reply`): (error, handle).
pub fn parse_reply(b: &[u8]) -> Result<(u32, u64), WireError> {
    let t = WireError::Truncated("reply header");
    let magic = be_u32(b, 0).ok_or(t.clone())?;
    match magic {
        SIMPLE_REPLY_MAGIC => Ok((be_u32(b, 4).ok_or(t.clone())?, be_u64(b, 8).ok_or(t)?)),
        STRUCTURED_REPLY_MAGIC | EXTENDED_REPLY_MAGIC => Err(WireError::Structured),
        m => Err(WireError::BadMagic(m as u64)),
    }
}

/// The name of an NBD error value, for messages.
pub fn errno_name(e: u32) -> &'static str {
    match e {
        EPERM => "EPERM (operation not permitted)",
        EIO => "EIO (input/output error)",
        ENOMEM => "ENOMEM (cannot allocate memory)",
        EINVAL => "EINVAL (invalid argument)",
        ENOSPC => "ENOSPC (no space left on device)",
        EOVERFLOW => "EOVERFLOW (value too large)",
        ENOTSUP => "ENOTSUP (operation not supported)",
        ESHUTDOWN => "ESHUTDOWN (server is shutting down)",
        _ => "an error value the protocol does not define",
    }
}

/// The name of an option reply type, for messages.
pub fn reply_name(r: u32) -> &'static str {
    match r {
        REP_ACK => "NBD_REP_ACK",
        REP_SERVER => "NBD_REP_SERVER",
        REP_INFO => "NBD_REP_INFO",
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        r if r & (1 << 31) != 0 => "an error reply",
        _ => "an unknown reply",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::proto::{CMD_FLAG_FUA, CMD_WRITE, OPT_GO};

    #[test]
    fn requests_round_trip_through_the_servers_parser() {
        let r = Request {
            flags: CMD_FLAG_FUA,
            kind: CMD_WRITE,
            handle: 0x0102_0304_0506_0708,
            offset: 1 << 40,
            length: 4096,
        };
        assert_eq!(proto::parse_request(&encode_request(&r)), Ok(r));
    }

    #[test]
    fn replies_and_option_replies_parse_what_the_server_encodes() {
        assert_eq!(parse_reply(&proto::simple_reply(42, EIO)), Ok((EIO, 42)));
        let mut s = proto::simple_reply(1, 0);
        s[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        assert_eq!(parse_reply(&s), Err(WireError::Structured));
        let rep = proto::option_reply(OPT_GO, REP_ERR_UNKNOWN, b"no");
        assert_eq!(
            parse_option_reply(&rep, OPT_GO),
            Ok(OptionReply {
                option: OPT_GO,
                reply: REP_ERR_UNKNOWN,
                len: 2
            })
        );
        assert!(matches!(
            parse_option_reply(&rep, 6),
            Err(WireError::WrongOption { .. })
        ));
        let (option, len) =
            proto::parse_option_header(&option_request(OPT_GO, &go_payload("x"))).unwrap();
        assert_eq!((option, len), (OPT_GO, 4 + 1 + 2 + 2));
        assert_eq!(
            proto::parse_info_request(&go_payload("disk")),
            Some(&b"disk"[..])
        );
    }

    #[test]
    fn greeting_and_info() {
        assert_eq!(
            parse_greeting(&proto::server_greeting()),
            Ok(proto::FLAG_FIXED_NEWSTYLE | proto::FLAG_NO_ZEROES)
        );
        let mut old = proto::server_greeting();
        old[8..16].copy_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
        assert_eq!(parse_greeting(&old), Err(WireError::Oldstyle));
        let mut d = INFO_EXPORT.to_be_bytes().to_vec();
        d.extend_from_slice(&(1u64 << 30).to_be_bytes());
        d.extend_from_slice(&5u16.to_be_bytes());
        assert_eq!(
            parse_info(&d),
            Ok(Info::Export {
                size: 1 << 30,
                flags: 5
            })
        );
        let bs = |min: u32, pref: u32, max: u32| {
            let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
            for v in [min, pref, max] {
                d.extend_from_slice(&v.to_be_bytes());
            }
            parse_info(&d)
        };
        assert_eq!(
            bs(512, 4096, 1 << 20),
            Ok(Info::BlockSize(BlockSizes {
                min: 512,
                preferred: 4096,
                max: 1 << 20
            }))
        );
        assert!(bs(3, 4096, 1 << 20).is_err(), "minimum not a power of 2");
        assert!(bs(1, 256, 1 << 20).is_err(), "preferred below 512");
        assert!(bs(512, 4096, 1024).is_err(), "maximum below preferred");
        assert!(
            bs(1 << 17, 1 << 17, 1 << 20).is_err(),
            "minimum above 64 KiB"
        );
        assert_eq!(parse_info(&[0, 9, 1, 2]), Ok(Info::Other(9)));
    }
}
