//! The client's socket: TCP or Unix (a path, or a name in the abstract namespace).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::uri::NbdAddr;

pub enum Sock {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Sock {
    /// Connects to `addr`; a TCP host is resolved and each of its addresses tried in turn.
    pub fn connect(addr: &NbdAddr, timeout: Duration) -> io::Result<Sock> {
        match addr {
            NbdAddr::Unix { socket } => {
                use std::os::unix::ffi::OsStrExt;
                let bytes = socket.as_os_str().as_bytes();
                if let Some(name) = bytes.strip_prefix(b"\0") {
                    use std::os::linux::net::SocketAddrExt;
                    let a = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                    Ok(Sock::Unix(UnixStream::connect_addr(&a)?))
                } else {
                    Ok(Sock::Unix(UnixStream::connect(socket)?))
                }
            }
            NbdAddr::Tcp { host, port } => {
                let mut last = None;
                for a in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&a, timeout) {
                        Ok(s) => {
                            // Small requests must not wait for Nagle's timer.
                            s.set_nodelay(true)?;
                            return Ok(Sock::Tcp(s));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the host has no address")
                }))
            }
        }
    }

    pub fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Unix(s) => Sock::Unix(s.try_clone()?),
            Sock::Tcp(s) => Sock::Tcp(s.try_clone()?),
        })
    }

    /// Read and write timeouts (`None`: block forever).
    pub fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Sock::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Sock::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    /// Shuts the socket down (every clone of it: a blocked reader wakes with end-of-file).
    pub fn shutdown(&self, how: Shutdown) {
        let _ = match self {
            Sock::Unix(s) => s.shutdown(how),
            Sock::Tcp(s) => s.shutdown(how),
        };
    }
}

impl Read for Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.read(buf),
            Sock::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Unix(s) => s.write(buf),
            Sock::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
