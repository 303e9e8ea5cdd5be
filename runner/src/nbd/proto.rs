//! The NBD protocol as pure functions over bytes (NetworkBlockDevice/nbd `doc/proto.md`):
//! fixed-newstyle handshake, option haggling (EXPORT_NAME, GO, INFO, LIST, ABORT; everything
//! else `NBD_REP_ERR_UNSUP`), and simple-reply transmission. No sockets here: every function
//! takes bytes and returns bytes or a typed error, and none panics on any input, so a fuzz
//! target can feed it arbitrary bytes.

use thiserror::Error;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;

// Info types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands and command flags.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

// Error values.
pub const EIO: u32 = 5;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ESHUTDOWN: u32 = 108;

/// Block sizes we advertise: requests are whole 512-byte sectors (the engine's unit);
/// 4 KiB (the cache block) is preferred; a request's payload is at most 32 MiB.
pub const MIN_BLOCK: u32 = 512;
pub const PREFERRED_BLOCK: u32 = 4096;
pub const MAX_PAYLOAD: u32 = 32 << 20;
/// Longest option payload we read: a name (at most 4096 bytes by the spec) plus the info
/// request list; anything longer is refused without being buffered.
pub const MAX_OPTION_LEN: u32 = 4096 + 4 + 2 + 2 * 64;

/// The export's name; the empty (default) name selects it too.
pub const EXPORT_NAME: &str = "wbcache";

pub const TRANSMISSION_FLAGS: u16 = FLAG_HAS_FLAGS
    | FLAG_SEND_FLUSH
    | FLAG_SEND_FUA
    | FLAG_SEND_TRIM
    | FLAG_SEND_WRITE_ZEROES
    | FLAG_CAN_MULTI_CONN;

/// A protocol violation that ends the session (hard disconnect).
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProtoError {
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("client flags {0:#x} include unknown bits")]
    UnknownClientFlags(u32),
    #[error("option {option} has a {len}-byte payload, more than the {MAX_OPTION_LEN} allowed")]
    OptionTooLong { option: u32, len: u32 },
    #[error("{0}")]
    Truncated(&'static str),
}

fn be_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// What the server sends first: magics and handshake flags.
pub fn server_greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

/// The client's 32-bit flags; returns whether it asked for no zeroes.
pub fn parse_client_flags(b: &[u8]) -> Result<u32, ProtoError> {
    let flags = be_u32(b, 0).ok_or(ProtoError::Truncated("client flags"))?;
    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(ProtoError::UnknownClientFlags(flags));
    }
    Ok(flags)
}

/// Length of an option header.
pub const OPTION_HEADER_LEN: usize = 16;

/// An option header: (option, payload length).
pub fn parse_option_header(b: &[u8]) -> Result<(u32, u32), ProtoError> {
    let magic = be_u64(b, 0).ok_or(ProtoError::Truncated("option header"))?;
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic(magic));
    }
    let option = be_u32(b, 8).ok_or(ProtoError::Truncated("option header"))?;
    let len = be_u32(b, 12).ok_or(ProtoError::Truncated("option header"))?;
    if len > MAX_OPTION_LEN {
        return Err(ProtoError::OptionTooLong { option, len });
    }
    Ok((option, len))
}

/// One option reply.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The export a handshake can select.
#[derive(Clone, Copy, Debug)]
pub struct Export {
    pub size_bytes: u64,
}

/// What to do after an option.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send the bytes, read the next option.
    Continue,
    /// Send the bytes, then enter transmission.
    Transmission,
    /// Send the bytes, then close (the client aborted).
    Close,
}

/// The outcome of one option: the bytes to send and what comes next.
#[derive(Debug, PartialEq, Eq)]
pub struct OptionOutcome {
    pub send: Vec<u8>,
    pub next: Next,
}

fn name_ok(name: &[u8]) -> bool {
    name.is_empty() || name == EXPORT_NAME.as_bytes()
}

fn info_export(export: &Export) -> Vec<u8> {
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
    d.extend_from_slice(&export.size_bytes.to_be_bytes());
    d.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
    d
}

fn info_block_size() -> Vec<u8> {
    let mut d = Vec::with_capacity(14);
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d.extend_from_slice(&MIN_BLOCK.to_be_bytes());
    d.extend_from_slice(&PREFERRED_BLOCK.to_be_bytes());
    d.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
    d
}

/// Answers one option (header already parsed, `data` its payload). `no_zeroes`: the client
/// negotiated `NBD_FLAG_C_NO_ZEROES` (affects the EXPORT_NAME reply).
pub fn handle_option(option: u32, data: &[u8], export: &Export, no_zeroes: bool) -> OptionOutcome {
    let reply = |r: u32, d: &[u8]| OptionOutcome {
        send: option_reply(option, r, d),
        next: Next::Continue,
    };
    match option {
        OPT_EXPORT_NAME => {
            if !name_ok(data) {
                // This option cannot fail politely: the spec says terminate the session.
                return OptionOutcome {
                    send: Vec::new(),
                    next: Next::Close,
                };
            }
            let mut b = Vec::with_capacity(10 + 124);
            b.extend_from_slice(&export.size_bytes.to_be_bytes());
            b.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
            if !no_zeroes {
                b.extend_from_slice(&[0u8; 124]);
            }
            OptionOutcome {
                send: b,
                next: Next::Transmission,
            }
        }
        OPT_ABORT => OptionOutcome {
            send: option_reply(option, REP_ACK, &[]),
            next: Next::Close,
        },
        OPT_LIST => {
            if !data.is_empty() {
                return reply(REP_ERR_INVALID, b"NBD_OPT_LIST takes no data");
            }
            let mut d = Vec::new();
            d.extend_from_slice(&(EXPORT_NAME.len() as u32).to_be_bytes());
            d.extend_from_slice(EXPORT_NAME.as_bytes());
            let mut send = option_reply(option, REP_SERVER, &d);
            send.extend(option_reply(option, REP_ACK, &[]));
            OptionOutcome {
                send,
                next: Next::Continue,
            }
        }
        OPT_INFO | OPT_GO => {
            let Some(name) = parse_info_request(data) else {
                return reply(REP_ERR_INVALID, b"malformed NBD_OPT_INFO/GO payload");
            };
            if !name_ok(name) {
                return reply(
                    REP_ERR_UNKNOWN,
                    b"no such export; the export is \"wbcache\"",
                );
            }
            // Block sizes are sent whether asked for or not (allowed): clients must know
            // that requests are whole sectors.
            let mut send = option_reply(option, REP_INFO, &info_export(export));
            send.extend(option_reply(option, REP_INFO, &info_block_size()));
            send.extend(option_reply(option, REP_ACK, &[]));
            OptionOutcome {
                send,
                next: if option == OPT_GO {
                    Next::Transmission
                } else {
                    Next::Continue
                },
            }
        }
        // Structured replies, TLS, meta contexts: not implemented; simple replies only.
        _ => reply(REP_ERR_UNSUP, b"option not supported by wbcache"),
    }
}

/// The name in an INFO/GO payload (`u32 name length, name, u16 count, count × u16`), if the
/// payload is well formed. The info types asked for do not matter: we always send ours.
pub fn parse_info_request(data: &[u8]) -> Option<&[u8]> {
    let name_len = be_u32(data, 0)? as usize;
    let name = data.get(4..4usize.checked_add(name_len)?)?;
    let at = 4 + name_len;
    let count = be_u16(data, at)? as usize;
    if data.len() != at + 2 + 2 * count {
        return None;
    }
    Some(name)
}

/// Length of a request header.
pub const REQUEST_LEN: usize = 28;

/// A transmission request header as sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub offset: u64,
    pub length: u32,
}

pub fn parse_request(b: &[u8]) -> Result<Request, ProtoError> {
    let magic = be_u32(b, 0).ok_or(ProtoError::Truncated("request header"))?;
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic(magic as u64));
    }
    let t = ProtoError::Truncated("request header");
    Ok(Request {
        flags: be_u16(b, 4).ok_or(t.clone())?,
        kind: be_u16(b, 6).ok_or(t.clone())?,
        handle: be_u64(b, 8).ok_or(t.clone())?,
        offset: be_u64(b, 16).ok_or(t.clone())?,
        length: be_u32(b, 24).ok_or(t)?,
    })
}

/// A validated command, in sectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read {
        sector: u64,
        len: u32,
    },
    Write {
        sector: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    Trim {
        sector: u64,
        sectors: u64,
        fua: bool,
    },
    WriteZeroes {
        sector: u64,
        sectors: u64,
        fua: bool,
    },
    Disconnect,
}

/// A request refused with an error reply (the session goes on).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub errno: u32,
    pub why: String,
}

/// How many payload bytes follow a request header on the wire: a WRITE's length, whatever
/// the verdict on the request (the caller must read or skip them to stay in sync).
pub fn payload_len(req: &Request) -> u32 {
    if req.kind == CMD_WRITE {
        req.length
    } else {
        0
    }
}

/// Checks a request against the export: known command and flags, whole sectors, inside the
/// device, payload within `MAX_PAYLOAD`.
pub fn validate(req: &Request, export: &Export) -> Result<Command, Refusal> {
    let refuse = |errno, why: String| Err(Refusal { errno, why });
    // FUA is accepted on every command (the spec requires it once SEND_FUA is advertised).
    let allowed = match req.kind {
        CMD_WRITE_ZEROES => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
        CMD_READ | CMD_WRITE | CMD_DISC | CMD_FLUSH | CMD_TRIM => CMD_FLAG_FUA,
        k => return refuse(EINVAL, format!("unknown command {k}")),
    };
    if req.flags & !allowed != 0 {
        return refuse(
            EINVAL,
            format!("flags {:#x} not valid for command {}", req.flags, req.kind),
        );
    }
    let fua = req.flags & CMD_FLAG_FUA != 0;
    match req.kind {
        CMD_DISC => return Ok(Command::Disconnect),
        CMD_FLUSH => {
            if req.offset != 0 || req.length != 0 {
                return refuse(EINVAL, "FLUSH with non-zero offset or length".into());
            }
            return Ok(Command::Flush);
        }
        _ => {}
    }
    let (off, len) = (req.offset, req.length as u64);
    if len == 0 {
        return refuse(EINVAL, "zero-length request".into());
    }
    if off % MIN_BLOCK as u64 != 0 || len % MIN_BLOCK as u64 != 0 {
        return refuse(
            EINVAL,
            format!("offset {off} or length {len} is not a multiple of {MIN_BLOCK}"),
        );
    }
    if matches!(req.kind, CMD_READ | CMD_WRITE) && req.length > MAX_PAYLOAD {
        return refuse(
            EOVERFLOW,
            format!("length {len} exceeds the maximum payload of {MAX_PAYLOAD}"),
        );
    }
    if off
        .checked_add(len)
        .is_none_or(|end| end > export.size_bytes)
    {
        // Reads beyond the end are invalid; writes beyond the end are "no space" (spec).
        let errno = if req.kind == CMD_READ { EINVAL } else { ENOSPC };
        return refuse(
            errno,
            format!(
                "offset {off} + length {len} is beyond the export's {} bytes",
                export.size_bytes
            ),
        );
    }
    let sector = off / MIN_BLOCK as u64;
    let sectors = len / MIN_BLOCK as u64;
    Ok(match req.kind {
        CMD_READ => Command::Read {
            sector,
            len: req.length,
        },
        CMD_WRITE => Command::Write {
            sector,
            len: req.length,
            fua,
        },
        CMD_TRIM => Command::Trim {
            sector,
            sectors,
            fua,
        },
        CMD_WRITE_ZEROES => Command::WriteZeroes {
            sector,
            sectors,
            fua,
        },
        _ => unreachable!("every allowed command is matched above"),
    })
}

/// A simple reply header (a successful READ's data follows it).
pub fn simple_reply(handle: u64, errno: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&errno.to_be_bytes());
    b[8..].copy_from_slice(&handle.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPORT: Export = Export {
        size_bytes: 1 << 20,
    };

    fn req(kind: u16, flags: u16, offset: u64, length: u32) -> Request {
        Request {
            flags,
            kind,
            handle: 7,
            offset,
            length,
        }
    }

    fn encode_request(r: &Request) -> Vec<u8> {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&r.flags.to_be_bytes());
        b.extend_from_slice(&r.kind.to_be_bytes());
        b.extend_from_slice(&r.handle.to_be_bytes());
        b.extend_from_slice(&r.offset.to_be_bytes());
        b.extend_from_slice(&r.length.to_be_bytes());
        b
    }

    #[test]
    fn request_round_trips_and_bad_magic_is_refused() {
        let r = req(CMD_WRITE, CMD_FLAG_FUA, 4096, 512);
        let bytes = encode_request(&r);
        assert_eq!(parse_request(&bytes), Ok(r));
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(matches!(parse_request(&bad), Err(ProtoError::BadMagic(_))));
        assert!(matches!(
            parse_request(&bytes[..27]),
            Err(ProtoError::Truncated(_))
        ));
    }

    #[test]
    fn validation_gives_the_spec_errors() {
        let e = |r: Request| validate(&r, &EXPORT).unwrap_err().errno;
        assert_eq!(e(req(CMD_READ, 0, 100, 512)), EINVAL, "misaligned offset");
        assert_eq!(e(req(CMD_WRITE, 0, 0, 100)), EINVAL, "misaligned length");
        assert_eq!(
            e(req(CMD_READ, 0, 1 << 20, 512)),
            EINVAL,
            "read past the end"
        );
        assert_eq!(
            e(req(CMD_WRITE, 0, 1 << 20, 512)),
            ENOSPC,
            "write past the end"
        );
        assert_eq!(e(req(CMD_TRIM, 0, u64::MAX - 511, 512)), ENOSPC, "overflow");
        assert_eq!(e(req(CMD_READ, 0, 0, MAX_PAYLOAD + 512)), EOVERFLOW);
        assert_eq!(e(req(9, 0, 0, 512)), EINVAL, "unknown command");
        assert_eq!(e(req(CMD_READ, CMD_FLAG_NO_HOLE, 0, 512)), EINVAL);
        assert_eq!(e(req(CMD_FLUSH, 0, 0, 512)), EINVAL);
        assert_eq!(e(req(CMD_READ, 0, 0, 0)), EINVAL);
        assert_eq!(
            validate(
                &req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE | CMD_FLAG_FUA, 512, 1024),
                &EXPORT
            ),
            Ok(Command::WriteZeroes {
                sector: 1,
                sectors: 2,
                fua: true
            })
        );
        assert_eq!(
            validate(&req(CMD_FLUSH, CMD_FLAG_FUA, 0, 0), &EXPORT),
            Ok(Command::Flush)
        );
        // A refused WRITE still carries its payload on the wire.
        assert_eq!(payload_len(&req(CMD_WRITE, 0, 1 << 20, 512)), 512);
        assert_eq!(payload_len(&req(CMD_READ, 0, 0, 512)), 0);
    }

    #[test]
    fn go_answers_export_and_block_size_then_ack() {
        let mut data = 0u32.to_be_bytes().to_vec();
        data.extend_from_slice(&0u16.to_be_bytes());
        let out = handle_option(OPT_GO, &data, &EXPORT, true);
        assert_eq!(out.next, Next::Transmission);
        // Three replies: INFO export (12 bytes), INFO block size (14), ACK.
        assert_eq!(out.send.len(), 20 + 12 + 20 + 14 + 20);
        assert_eq!(be_u32(&out.send, 12), Some(REP_INFO));
        assert_eq!(be_u64(&out.send, 22), Some(EXPORT.size_bytes));
        assert_eq!(be_u16(&out.send, 30), Some(TRANSMISSION_FLAGS));
        assert_eq!(be_u32(&out.send, 32 + 12), Some(REP_INFO));
        assert_eq!(be_u32(&out.send, 66 + 12), Some(REP_ACK));
    }

    #[test]
    fn unknown_names_and_options_are_errors_not_disconnects() {
        let mut data = 3u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"foo");
        data.extend_from_slice(&0u16.to_be_bytes());
        let out = handle_option(OPT_INFO, &data, &EXPORT, false);
        assert_eq!(be_u32(&out.send, 12), Some(REP_ERR_UNKNOWN));
        assert_eq!(out.next, Next::Continue);
        let out = handle_option(OPT_STRUCTURED_REPLY, &[], &EXPORT, false);
        assert_eq!(be_u32(&out.send, 12), Some(REP_ERR_UNSUP));
        let out = handle_option(OPT_GO, &[0, 0, 0, 9], &EXPORT, false);
        assert_eq!(be_u32(&out.send, 12), Some(REP_ERR_INVALID));
        assert_eq!(
            handle_option(OPT_EXPORT_NAME, b"nope", &EXPORT, false).next,
            Next::Close
        );
        let out = handle_option(OPT_EXPORT_NAME, b"", &EXPORT, false);
        assert_eq!(out.send.len(), 8 + 2 + 124);
        assert_eq!(out.next, Next::Transmission);
    }

    #[test]
    fn option_header_and_client_flags_are_checked() {
        let mut h = IHAVEOPT.to_be_bytes().to_vec();
        h.extend_from_slice(&OPT_GO.to_be_bytes());
        h.extend_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        assert!(matches!(
            parse_option_header(&h),
            Err(ProtoError::OptionTooLong { .. })
        ));
        assert!(parse_client_flags(&[0, 0, 0, 4]).is_err());
        assert_eq!(parse_client_flags(&[0, 0, 0, 3]), Ok(3));
        assert!(parse_client_flags(&[0, 0]).is_err());
    }

    /// Arbitrary bytes never panic any parser (a cheap stand-in until the fuzz target exists).
    #[test]
    fn parsers_survive_arbitrary_bytes() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            let _ = parse_request(&bytes).map(|r| validate(&r, &EXPORT));
            let _ = parse_option_header(&bytes);
            let _ = parse_client_flags(&bytes);
            let _ = parse_info_request(&bytes);
            for opt in [OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST, OPT_ABORT, 99] {
                let _ = handle_option(opt, &bytes, &EXPORT, x & 1 == 0);
            }
        }
    }
}
