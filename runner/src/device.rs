//! The devices a command opens, whatever they are: a file or block device (`FileDevice`) or an
//! NBD export (`NbdDevice`), named on the command line by a path or by an NBD URI
//! (`nbd://HOST[:PORT]/EXPORT`, `nbd+unix:///EXPORT?socket=PATH`). The rest of the runner sees
//! one `Device` and does not care which.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use engine::{BlockDevice, DeviceRole, IoError, ReadReq, WriteReq};
use thiserror::Error;

use crate::filedev::{same_device, DeviceError, FileDevice, IoMode, DEVICE_GRAIN};
use crate::nbd::client::{
    looks_like_nbd_uri, NbdClientError, NbdDevice, NbdOptions, NbdUri, UriError,
};

/// A device as named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Path(PathBuf),
    Nbd(NbdUri),
}

impl FromStr for DeviceSpec {
    type Err = UriError;

    /// An argument that starts with an NBD scheme (`nbd:`, `nbd+unix:`, `nbds:`, …) is a URI
    /// (an error if it is not a valid one we support); anything else is a path.
    fn from_str(s: &str) -> Result<Self, UriError> {
        if looks_like_nbd_uri(s) {
            Ok(DeviceSpec::Nbd(s.parse()?))
        } else {
            Ok(DeviceSpec::Path(PathBuf::from(s)))
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Path(p) => write!(f, "{}", p.display()),
            DeviceSpec::Nbd(u) => write!(f, "{u}"),
        }
    }
}

impl From<PathBuf> for DeviceSpec {
    fn from(p: PathBuf) -> Self {
        DeviceSpec::Path(p)
    }
}

impl From<&Path> for DeviceSpec {
    fn from(p: &Path) -> Self {
        DeviceSpec::Path(p.to_path_buf())
    }
}

impl DeviceSpec {
    /// Whether two specs name the same device: the same file or block device
    /// (`filedev::same_device`), or the same export at the same address (what a client can
    /// know of an NBD server).
    pub fn same_device(&self, other: &DeviceSpec) -> bool {
        match (self, other) {
            (DeviceSpec::Path(a), DeviceSpec::Path(b)) => same_device(a, b),
            (DeviceSpec::Nbd(a), DeviceSpec::Nbd(b)) => a.addr == b.addr && a.export == b.export,
            _ => false,
        }
    }
}

#[derive(Debug, Error)]
pub enum OpenError {
    #[error(transparent)]
    File(#[from] DeviceError),
    #[error(transparent)]
    Nbd(#[from] NbdClientError),
    #[error("{uri}: size {size} bytes is too small: at least {min} bytes are needed")]
    TooSmall { uri: String, size: u64, min: u64 },
}

/// An opened device.
#[derive(Debug)]
pub enum Device {
    File(FileDevice),
    Nbd(NbdDevice),
}

impl Device {
    /// Opens `spec` for reading and writing as the `role` device. `mode` applies to files
    /// only; `min_bytes` is the smallest size the caller accepts.
    pub fn open(
        spec: &DeviceSpec,
        role: DeviceRole,
        mode: IoMode,
        min_bytes: u64,
    ) -> Result<Device, OpenError> {
        match spec {
            DeviceSpec::Path(p) => Ok(Device::File(FileDevice::open(p, role, mode, min_bytes)?)),
            DeviceSpec::Nbd(u) => {
                let d = NbdDevice::connect(u, role)?;
                // As for files: no device is smaller than a block (the client checked that).
                let size = d.size_sectors() * 512;
                if size < min_bytes.max(DEVICE_GRAIN) {
                    return Err(OpenError::TooSmall {
                        uri: u.to_string(),
                        size,
                        min: min_bytes.max(DEVICE_GRAIN),
                    });
                }
                Ok(Device::Nbd(d))
            }
        }
    }

    /// Opens `spec` for reading only (the offline `check` and `dump`): every write or flush
    /// through it fails, so an inspection cannot change the device even by mistake.
    pub fn open_read_only(
        spec: &DeviceSpec,
        role: DeviceRole,
        mode: IoMode,
    ) -> Result<Device, OpenError> {
        match spec {
            DeviceSpec::Path(p) => Ok(Device::File(FileDevice::open_read_only(p, role, mode)?)),
            DeviceSpec::Nbd(u) => {
                let opts = NbdOptions {
                    read_only: true,
                    ..NbdOptions::default()
                };
                Ok(Device::Nbd(NbdDevice::connect_with(u, role, &opts)?))
            }
        }
    }

    /// What the device is and how it is used, for the operator's log.
    pub fn describe(&self) -> String {
        match self {
            Device::File(f) => format!(
                "{}: {}",
                f.path().display(),
                if f.is_direct() {
                    format!("O_DIRECT, {}-byte alignment", f.alignment())
                } else {
                    "buffered I/O".to_string()
                }
            ),
            Device::Nbd(n) => {
                let i = n.info();
                let mut v = vec!["FLUSH"];
                v.push(if i.can_fua() {
                    "FUA"
                } else {
                    "FUA as write+flush"
                });
                if i.can_trim() {
                    v.push("TRIM");
                }
                format!(
                    "{}: NBD, {} bytes, {}; requests up to {} KiB{}",
                    n.uri(),
                    i.size_bytes,
                    v.join(", "),
                    n.max_request_bytes() / 1024,
                    if i.go { "" } else { " (old handshake)" }
                )
            }
        }
    }
}

impl BlockDevice for Device {
    fn size_sectors(&self) -> u64 {
        match self {
            Device::File(d) => d.size_sectors(),
            Device::Nbd(d) => BlockDevice::size_sectors(d),
        }
    }
    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), IoError> {
        match self {
            Device::File(d) => d.read(sector, buf),
            Device::Nbd(d) => d.read(sector, buf),
        }
    }
    fn write(&mut self, sector: u64, data: &[u8], fua: bool) -> Result<(), IoError> {
        match self {
            Device::File(d) => d.write(sector, data, fua),
            Device::Nbd(d) => d.write(sector, data, fua),
        }
    }
    fn flush(&mut self) -> Result<(), IoError> {
        match self {
            Device::File(d) => d.flush(),
            Device::Nbd(d) => d.flush(),
        }
    }
    fn write_batch(&mut self, writes: &[WriteReq<'_>]) -> Result<(), IoError> {
        match self {
            Device::File(d) => d.write_batch(writes),
            Device::Nbd(d) => d.write_batch(writes),
        }
    }
    fn read_batch(&mut self, reads: &mut [ReadReq<'_>]) -> Result<(), IoError> {
        match self {
            Device::File(d) => d.read_batch(reads),
            Device::Nbd(d) => d.read_batch(reads),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_uris() {
        let s: DeviceSpec = "/dev/sdb".parse().unwrap();
        assert_eq!(s, DeviceSpec::Path("/dev/sdb".into()));
        let s: DeviceSpec = "nbd+unix:///c?socket=/run/x.sock".parse().unwrap();
        assert!(matches!(s, DeviceSpec::Nbd(_)));
        assert_eq!(s.to_string(), "nbd+unix:///c?socket=/run/x.sock");
        let e = "nbds://host/x".parse::<DeviceSpec>().unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        let a: DeviceSpec = "nbd://h/x".parse().unwrap();
        let b: DeviceSpec = "nbd://h:10809/x".parse().unwrap();
        let c: DeviceSpec = "nbd://h/y".parse().unwrap();
        assert!(a.same_device(&b) && !a.same_device(&c));
    }
}
