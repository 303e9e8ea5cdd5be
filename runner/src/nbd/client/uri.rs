//! NBD URIs (NetworkBlockDevice/nbd `doc/uri.md`): `nbd://HOST[:PORT]/EXPORT` (TCP, port 10809
//! by default) and `nbd+unix:///EXPORT?socket=PATH` (a Unix socket; a `socket` starting with
//! `%00` names one in the abstract namespace). The export name is the path without its leading
//! `/`, percent-decoded. TLS (`nbds://`, `nbds+unix://`, `tls-*` parameters) and user names are
//! refused with an error that says so, as are unknown parameters (the spec asks parsers to
//! diagnose them) and a host in an `nbd+unix` URI.

use std::ffi::OsString;
use std::fmt;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::str::FromStr;

use thiserror::Error;

/// The port IANA assigned to NBD.
pub const DEFAULT_PORT: u16 = 10809;
/// The spec's limit on strings (export names).
const MAX_NAME: usize = 4096;

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdAddr {
    /// `host` without the brackets of an IPv6 literal.
    Tcp { host: String, port: u16 },
    /// A socket path; a leading NUL byte means the abstract namespace.
    Unix { socket: PathBuf },
}

/// A parsed NBD URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUri {
    pub addr: NbdAddr,
    /// The export name (may be empty: the server's default export).
    pub export: String,
    text: String,
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{uri}: {why}")]
pub struct UriError {
    pub uri: String,
    pub why: String,
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Whether `s` starts with an NBD URI scheme (`nbd:`, `nbds:`, `nbd+…:`, any case): such an
/// argument is parsed as a URI, never taken for a path (write `./nbd:x` for a file of that
/// name).
pub fn looks_like_nbd_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let scheme = scheme.to_ascii_lowercase();
    let base = scheme.split('+').next().unwrap_or("");
    (base == "nbd" || base == "nbds")
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decodes `s` to bytes.
fn decode(s: &str) -> Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let pair = b
                .get(i + 1)
                .and_then(|&h| Some((hex(h)?, hex(*b.get(i + 2)?)?)));
            let Some((h, l)) = pair else {
                return Err(format!("bad percent-encoding at {:?}", &s[i..]));
            };
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

impl FromStr for NbdUri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        let fail = |why: String| UriError {
            uri: s.to_string(),
            why,
        };
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| fail("not a URI (no scheme)".into()))?;
        let unix = match scheme.to_ascii_lowercase().as_str() {
            "nbd" => false,
            "nbd+unix" => true,
            "nbds" | "nbds+unix" => {
                return Err(fail(format!(
                    "{scheme}:// requires TLS, which wbcache's NBD client does not support; \
                     use nbd:// or nbd+unix:// to a server without TLS"
                )))
            }
            other => {
                return Err(fail(format!(
                    "unsupported scheme {other:?}: only nbd:// and nbd+unix:// are supported"
                )))
            }
        };
        if s.bytes()
            .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
        {
            return Err(fail("contains spaces or control characters".into()));
        }
        let rest = rest
            .strip_prefix("//")
            .ok_or_else(|| fail(format!("expected {scheme}://")))?;
        if rest.contains('#') {
            return Err(fail("a fragment (#…) has no meaning in an NBD URI".into()));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, ""),
        };
        let export = String::from_utf8(decode(path).map_err(fail)?)
            .map_err(|_| fail("the export name is not UTF-8".into()))?;
        if export.contains('\0') || export.len() > MAX_NAME {
            return Err(fail(format!(
                "the export name must have no NUL byte and at most {MAX_NAME} bytes"
            )));
        }
        let mut socket: Option<Vec<u8>> = None;
        for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let key = String::from_utf8(decode(key).map_err(fail)?)
                .map_err(|_| fail("a query parameter name is not UTF-8".into()))?;
            match key.as_str() {
                "socket" if !unix => {
                    return Err(fail(
                        "socket= belongs to nbd+unix:// URIs, not nbd://".into(),
                    ))
                }
                "socket" if socket.is_some() => return Err(fail("socket= is given twice".into())),
                "socket" => socket = Some(decode(value).map_err(fail)?),
                k if k.starts_with("tls-") => {
                    return Err(fail(format!(
                        "{k}= asks for TLS, which wbcache's NBD client does not support"
                    )))
                }
                k => return Err(fail(format!("unknown query parameter {k:?}"))),
            }
        }
        let addr = if unix {
            if !authority.is_empty() {
                return Err(fail(format!(
                    "nbd+unix:// takes no host ({authority:?}); write nbd+unix:///EXPORT?socket=PATH"
                )));
            }
            match socket {
                Some(p) if !p.is_empty() => NbdAddr::Unix {
                    socket: PathBuf::from(OsString::from_vec(p)),
                },
                _ => {
                    return Err(fail(
                        "nbd+unix:// needs the socket: nbd+unix:///EXPORT?socket=PATH".into(),
                    ))
                }
            }
        } else {
            let (host, port) = parse_authority(authority).map_err(fail)?;
            NbdAddr::Tcp { host, port }
        };
        Ok(NbdUri {
            addr,
            export,
            text: s.to_string(),
        })
    }
}

/// `host[:port]`, `[v6]` or `[v6]:port`; no user name (it is only for TLS).
fn parse_authority(a: &str) -> Result<(String, u16), String> {
    if a.contains('@') {
        return Err(
            "a user name is only for TLS, which wbcache's NBD client does not support".into(),
        );
    }
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ]")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the IPv6 address")?),
        };
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{host:?} is not an IPv6 address"));
        }
        (host.to_string(), port)
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (a.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("nbd:// needs a host: nbd://HOST[:PORT]/EXPORT".into());
    }
    let host = String::from_utf8(decode(&host)?).map_err(|_| "the host is not UTF-8")?;
    let port = match port {
        // RFC 3986 allows an empty port: the default.
        None | Some("") => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|c| c.is_ascii_digit()) => n,
            _ => return Err(format!("bad port {p:?}")),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> NbdUri {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn err(s: &str) -> String {
        match s.parse::<NbdUri>() {
            Ok(u) => panic!("{s} parsed as {u:?}"),
            Err(e) => e.why,
        }
    }
    fn tcp(host: &str, port: u16) -> NbdAddr {
        NbdAddr::Tcp {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn the_specs_examples() {
        // doc/uri.md, "NBD URI export name".
        for (uri, name) in [
            ("nbd://example.com/disk", "disk"),
            ("nbd+unix:///disk?socket=sock", "disk"),
            ("nbd://example.com/", ""),
            ("nbd://example.com", ""),
            ("nbd://example.com//disk", "/disk"),
            ("nbd://example.com/hello%20world", "hello world"),
        ] {
            assert_eq!(ok(uri).export, name, "{uri}");
        }
        assert_eq!(ok("nbd://example.com/disk").addr, tcp("example.com", 10809));
        assert_eq!(
            ok("nbd+unix:///disk?socket=sock").addr,
            NbdAddr::Unix {
                socket: "sock".into()
            }
        );
        // The abstract namespace.
        let u = ok("nbd+unix:///?socket=%00/abstract");
        assert_eq!(
            u.addr,
            NbdAddr::Unix {
                socket: "\0/abstract".into()
            }
        );
        assert_eq!(u.to_string(), "nbd+unix:///?socket=%00/abstract");
    }

    #[test]
    fn hosts_ports_and_sockets() {
        assert_eq!(ok("nbd://127.0.0.1:1234/x").addr, tcp("127.0.0.1", 1234));
        assert_eq!(
            ok("NBD://h:/x").addr,
            tcp("h", 10809),
            "empty port, any case"
        );
        assert_eq!(ok("nbd://[::1]:99/").addr, tcp("::1", 99));
        assert_eq!(ok("nbd://[::1]").addr, tcp("::1", 10809));
        let u = ok("nbd+unix:///e%2Fx?socket=/tmp/a%20b.sock");
        assert_eq!(u.export, "e/x");
        assert_eq!(
            u.addr,
            NbdAddr::Unix {
                socket: "/tmp/a b.sock".into()
            }
        );
        assert_eq!(ok("nbd+unix://?socket=s").export, "", "no path at all");
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        assert!(err("nbds://h/x").contains("TLS"));
        assert!(err("nbds+unix:///x?socket=s").contains("TLS"));
        assert!(err("nbd://h/x?tls-type=x509").contains("TLS"));
        assert!(err("nbd://user@h/x").contains("user name"));
        assert!(err("nbd+vsock://1/x").contains("unsupported scheme"));
        assert!(err("nbd+unix:///x").contains("needs the socket"));
        assert!(err("nbd+unix:///x?socket=").contains("needs the socket"));
        assert!(err("nbd+unix://host/x?socket=s").contains("takes no host"));
        assert!(err("nbd://h/x?socket=s").contains("nbd+unix"));
        assert!(err("nbd+unix:///x?socket=a&socket=b").contains("twice"));
        assert!(err("nbd+unix:///x?socket=a&x-foo=1").contains("unknown query parameter"));
        assert!(err("nbd:///x").contains("needs a host"));
        assert!(err("nbd://h:0/x").contains("bad port"));
        assert!(err("nbd://h:65536/x").contains("bad port"));
        assert!(err("nbd://h:+12/x").contains("bad port"));
        assert!(err("nbd://[::1/x").contains("closing ]"));
        assert!(err("nbd://[nothex]/x").contains("IPv6"));
        assert!(err("nbd://h/%zz").contains("percent"));
        assert!(err("nbd://h/%4").contains("percent"));
        assert!(err("nbd://h/a%00b").contains("NUL"));
        assert!(err("nbd://h/%ff").contains("UTF-8"));
        assert!(err("nbd:h/x").contains("nbd://"));
        assert!(err("nbd://h/x#frag").contains("fragment"));
        assert!(err("nbd://h/a b").contains("spaces"));
        let long = format!("nbd://h/{}", "a".repeat(4097));
        assert!(err(&long).contains("at most 4096"));
    }

    #[test]
    fn what_counts_as_a_uri_argument() {
        for s in [
            "nbd://h/x",
            "NBD+UNIX:///?socket=s",
            "nbds://h",
            "nbd+vsock://1",
        ] {
            assert!(looks_like_nbd_uri(s), "{s}");
        }
        for s in [
            "/dev/sda",
            "cache.img",
            "./nbd:x",
            "nbdfile.img",
            "http://x",
            "nbdx://y",
        ] {
            assert!(!looks_like_nbd_uri(s), "{s}");
        }
    }
}
