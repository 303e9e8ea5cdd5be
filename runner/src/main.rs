//! `wbcache`: the production runner. See `wbcache --help` and README.md, "Use it".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, Parser, Subcommand};
use engine::tunables::{Tunables, TUNABLE_RANGES};

use runner::commands;
use runner::device::DeviceSpec;
use runner::executor::select::IoEngine;
use runner::filedev::IoMode;
use runner::server::{self, Listen, ServeOptions};

fn long_version() -> &'static str {
    // The seed hazards are a test-only engine feature; this line says whether this binary
    // was built with them (see runner/tests/build_info.rs).
    if engine::QUIRKS_COMPILED {
        concat!(
            env!("CARGO_PKG_VERSION"),
            "\nquirks: compiled in (a workspace test build; all off at run time)"
        )
    } else {
        concat!(env!("CARGO_PKG_VERSION"), "\nquirks: off")
    }
}

#[derive(Parser)]
#[command(
    name = "wbcache",
    version,
    long_version = long_version(),
    about = "A write-back block cache (dm-writeboost design) served over NBD",
    long_about = "A write-back block cache in the dm-writeboost design. `format` prepares a cache \
device (type 0, or type 1 with a persistent-log device given by --plog), `serve` puts it in front \
of a backing device and exports the result over NBD, `status` and `message` talk to a running \
server, `writeback` drains a cache offline, `check` says whether recovery would accept the \
devices and what it would replay, `dump` decodes their metadata.

Devices (--backing, --cache, --plog, and the devices of `check` and `dump`) are files, block \
devices, or NBD exports named by URI: nbd://HOST[:PORT]/EXPORT (TCP, port 10809 by default) or \
nbd+unix:///EXPORT?socket=PATH (a Unix socket); the export name may be empty. An NBD server \
must support FLUSH (every role needs its writes made durable); FUA and TRIM are used where \
offered; no TLS (nbds:// is refused). If an NBD server dies, the cache goes dead (clients get \
EIO) and a restart recovers. NBD exports are not locked against a second user (NBD has no way \
to claim an export): keep other clients off them. --buffered applies to files only."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Format a cache device (refuses one that holds anything, unless --force).
    Format {
        /// Cache device: a regular file or a block device of any whole number of 512-byte
        /// sectors (whole segments after the 1 MiB superblock area are used, the rest is left),
        /// or an NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH).
        #[arg(long, value_name = "C")]
        cache: DeviceSpec,
        /// Persistent-log device: formats a type-1 cache, whose FLUSH and FUA need only this
        /// log durable. Needs 8 KiB of superblocks and room for 2 regions of 18 sectors per
        /// block of a segment (about 2.25 MiB at order 10); uses at most 64 regions. Refused if
        /// it holds anything, unless --force. A path or an NBD URI.
        #[arg(long, value_name = "P")]
        plog: Option<DeviceSpec>,
        /// Segment size order: segments of 2^N sectors (4..=10; 10 = 512 KiB, as upstream).
        #[arg(
            long,
            value_name = "N",
            default_value_t = 10,
            value_parser = clap::value_parser!(u8).range(4..=10)
        )]
        order: u8,
        /// Overwrite a device (cache or plog) whose first MiB is not all zero or holds a
        /// wbcache superblock.
        #[arg(long)]
        force: bool,
    },
    /// Recover the cache and serve backing+cache over NBD until SIGTERM or SIGINT.
    Serve(Box<ServeArgs>),
    /// Show the status of a running server.
    Status {
        /// Print a JSON object instead of `key: value` lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Send a message to a running server: drop_caches, clear_stat, or TUNABLE VALUE.
    #[command(
        long_about = "Send a message to a running server: `drop_caches` (write every dirty \
block back; shows progress until the cache is clean), `clear_stat` (zero the counters), or \
`TUNABLE VALUE` (set one engine tunable, e.g. `allow_writeback 1`)."
    )]
    Message {
        /// The message words, e.g. `drop_caches` or `allow_writeback 1`.
        #[arg(required = true, num_args = 1..=2, value_name = "WORDS")]
        words: Vec<String>,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Offline: recover the cache and write every dirty block back to the backing device.
    Writeback {
        /// Backing device (the slow one that holds the data): a whole number of 4 KiB blocks;
        /// a path or an NBD URI.
        #[arg(long, value_name = "B")]
        backing: DeviceSpec,
        /// Cache device (wbcache or upstream dm-writeboost format): a path or an NBD URI.
        #[arg(long, value_name = "C")]
        cache: DeviceSpec,
        /// Persistent-log device of a type-1 cache (required for one, refused for type 0).
        #[arg(long, value_name = "P")]
        plog: Option<DeviceSpec>,
    },
    /// Offline fsck: would recovery accept the devices, and what would it replay? Reads only.
    #[command(
        long_about = "Offline fsck of a cache device (and its plog, for type 1); reads \
only, never writes or flushes. Says what `serve` would do on start: the superblock and record it \
would use, every non-empty segment slot (valid, stale, unreachable, torn, misplaced), the \
segments replay applies and where it stops; for type 1 also both plog superblock copies, every \
plog region, and what the engine's own recovery (run on in-memory copy-on-write overlays) would \
apply: plog segments rebuilt, entries replayed, regions voided. Torn segments or entries at the \
end of a log are normal after a power cut and are notes, not problems.

Exit status: 0 sound (recovery would succeed), 1 not sound (the problems say why), 2 usage or \
I/O error (including a type-1 cache without --plog or a type-0 cache with one)."
    )]
    Check {
        #[command(flatten)]
        cache: CacheArg,
        /// Persistent-log device of a type-1 cache.
        #[arg(long, value_name = "P")]
        plog: Option<DeviceSpec>,
        /// Backing device: also check that every replayed block fits in it.
        #[arg(long, value_name = "B")]
        backing: Option<DeviceSpec>,
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Offline: decode the metadata (superblock, records, segment headers and metablocks).
    #[command(
        long_about = "Decode the metadata of a cache device: superblock, both record \
copies, geometry, and for every non-empty slot (or only segment ID) the header, its checksum \
verdict and each metablock (backing sector, dirty bits, block CRC verdict). With --plog, also \
both plog superblock copies and a summary of every plog region. Reads only.

Exit status: 0, or 1 when --segment names a segment that is not on the device (the output \
says what its slot holds instead), when there are no segments to decode (no wbcache or \
dm-writeboost superblock, or a geometry that does not fit the device), or on an error."
    )]
    Dump {
        #[command(flatten)]
        cache: CacheArg,
        /// Only this segment id (with its metablocks).
        #[arg(long, value_name = "ID")]
        segment: Option<u64>,
        /// Persistent-log device of a type-1 cache: also its superblocks and regions.
        #[arg(long, value_name = "P")]
        plog: Option<DeviceSpec>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// The cache device of `check` and `dump`: `C` or `--cache C`, as the other commands take it.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct CacheArg {
    /// Cache device (file, block device or NBD URI, opened read-only; wbcache or upstream
    /// dm-writeboost format).
    #[arg(value_name = "C")]
    path: Option<DeviceSpec>,
    /// The same, as a flag (as `format`, `serve` and `writeback` take it).
    #[arg(long = "cache", value_name = "C")]
    flag: Option<DeviceSpec>,
}

impl CacheArg {
    fn spec(self) -> DeviceSpec {
        self.path
            .or(self.flag)
            .expect("clap requires C or --cache C")
    }
}

#[derive(Args)]
struct ControlArgs {
    /// Control socket of the server [default: <SOCKET>.ctl with --socket, else
    /// $XDG_RUNTIME_DIR/wbcache.ctl or /tmp/wbcache.ctl].
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// NBD socket of the server; its control socket is <SOCKET>.ctl.
    #[arg(long, value_name = "SOCKET", conflicts_with = "control")]
    socket: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Backing device (the slow one that holds the data): a whole number of 4 KiB blocks; a
    /// file, a block device, or an NBD export, nbd://HOST[:PORT]/EXPORT or
    /// nbd+unix:///EXPORT?socket=PATH (the server must support FLUSH; if it dies, the cache
    /// goes dead and a restart recovers).
    #[arg(long, value_name = "B")]
    backing: DeviceSpec,
    /// Cache device, formatted with `wbcache format`: a path or an NBD URI.
    #[arg(long, value_name = "C")]
    cache: DeviceSpec,
    /// Persistent-log device of a type-1 cache (`wbcache format --plog`): required for one,
    /// refused for a type-0 cache. A path or an NBD URI.
    #[arg(long, value_name = "P")]
    plog: Option<DeviceSpec>,
    /// Serve NBD on this Unix socket (e.g. for `nbd+unix:///?socket=PATH`).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "listen",
        conflicts_with = "listen"
    )]
    socket: Option<PathBuf>,
    /// Serve NBD on TCP at HOST:PORT, HOST an address or a name such as localhost (loopback
    /// only unless --allow_remote).
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Allow --listen on a non-loopback address (NBD has no authentication here).
    #[arg(long = "allow_remote", alias = "allow-remote")]
    allow_remote: bool,
    /// Control socket for `wbcache status` / `message` [default: <SOCKET>.ctl with --socket,
    /// else $XDG_RUNTIME_DIR/wbcache.ctl or /tmp/wbcache.ctl].
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// RAM buffers (segments being filled or waiting to be written), 1..=1024.
    #[arg(
        long = "nr_rambuf_pool",
        alias = "nr-rambuf-pool",
        value_name = "N",
        default_value_t = 8
    )]
    nr_rambuf_pool: usize,
    /// Open the device files without O_DIRECT (through the page cache); no effect on NBD
    /// devices.
    #[arg(long)]
    buffered: bool,
    /// How operations reach the devices: `auto` uses io_uring (up to 128 operations in
    /// flight per device, completions reaped by one thread) if the kernel allows it and
    /// otherwise the thread pool; `uring` refuses to start, saying why, where io_uring is
    /// unavailable; `threads` always uses the pool (16 I/O threads per device). Files and
    /// block devices only: an NBD export's operations go through its own connection.
    #[arg(
        long = "io-engine",
        alias = "io_engine",
        value_name = "ENGINE",
        value_enum,
        default_value_t = IoEngine::Auto
    )]
    io_engine: IoEngine,
    /// Do not start writeback before the ring is full: wait until a slot is needed, as
    /// dm-writeboost does (by default writeback starts a batch, `nr_max_batched_writeback`
    /// segments or a quarter of the ring, before the ring is full, whatever `allow_writeback`
    /// says, so a client write rarely waits for a forced batch).
    #[arg(long = "no-write-back-ahead")]
    no_write_back_ahead: bool,
    #[command(flatten)]
    tunables: TunableArgs,
}

/// One `--NAME VALUE` flag per engine tunable, generated from the engine's own table so a
/// new tunable needs no runner change.
struct TunableArgs {
    given: Vec<(&'static str, u64)>,
}

/// A tunable's default as `serve --help` shows it (the engine's own defaults; one depends on
/// the segment order the cache was formatted with).
fn tunable_default(name: &str) -> String {
    let at = |order: u8| {
        Tunables::defaults(order)
            .list()
            .into_iter()
            .find(|&(n, _)| n == name)
            .map_or(0, |(_, v)| v)
    };
    let (lowest, upstream) = (
        at(engine::format::MIN_ORDER),
        at(engine::format::UPSTREAM_ORDER),
    );
    if lowest == upstream {
        upstream.to_string()
    } else {
        format!(
            "{upstream} at segment order {}, {lowest} at order {}",
            engine::format::UPSTREAM_ORDER,
            engine::format::MIN_ORDER
        )
    }
}

fn tunable_help(name: &str) -> &'static str {
    match name {
        "allow_writeback" => "Write back in the background (0/1)",
        "enable_writeback_modulator" => {
            "Let the backing device's load decide background writeback (0/1)"
        }
        "writeback_threshold" => "Backing load (%) below which the modulator writes back",
        "nr_max_batched_writeback" => "Segments written back per batch",
        "update_record_interval" => "Seconds between superblock-record updates (0 = off)",
        "sync_interval" => "Seconds between forced syncs of the RAM buffer (0 = off)",
        "sequential_cutoff" => {
            "Bytes a sequential stream of writes reaches before its writes bypass the cache (0 = off)"
        }
        _ => "Engine tunable",
    }
}

impl Args for TunableArgs {
    fn augment_args(cmd: Command) -> Command {
        TUNABLE_RANGES.iter().fold(cmd, |cmd, &(name, min, max)| {
            cmd.arg(
                Arg::new(name)
                    .long(name)
                    // Built once per process for a handful of names: leaking is the simplest way
                    // to give clap the `'static` alias it wants.
                    .alias(&*Box::leak(name.replace('_', "-").into_boxed_str()))
                    .value_name("VALUE")
                    .value_parser(clap::value_parser!(u64))
                    .help_heading("Engine tunables (also settable later with `wbcache message`)")
                    .help(format!(
                        "{} [{min}..={max}; default: {}]",
                        tunable_help(name),
                        tunable_default(name)
                    )),
            )
        })
    }
    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for TunableArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let given = TUNABLE_RANGES
            .iter()
            .filter_map(|&(name, ..)| m.get_one::<u64>(name).map(|&v| (name, v)))
            .collect();
        Ok(TunableArgs { given })
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

fn default_control() -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    dir.join("wbcache.ctl")
}

fn control_of_socket(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".ctl");
    PathBuf::from(s)
}

fn control_path(c: &ControlArgs) -> PathBuf {
    match (&c.control, &c.socket) {
        (Some(p), _) => p.clone(),
        (None, Some(s)) => control_of_socket(s),
        (None, None) => default_control(),
    }
}

/// The addresses `--listen HOST:PORT` names: an address, or a host name the system resolves
/// (`localhost:10809`); `serve` binds the first that works.
fn resolve_listen(given: &str) -> anyhow::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    if given
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        anyhow::bail!("--listen {given}: expected HOST:PORT, e.g. localhost:10809 or [::1]:10809");
    }
    let addrs: Vec<SocketAddr> = given
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--listen {given}: cannot resolve it: {e}"))?
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("--listen {given}: the name resolves to no address");
    }
    Ok(addrs)
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    // Every tunable is range-checked by the engine's own rules before anything is opened.
    let mut check = Tunables::defaults(engine::format::UPSTREAM_ORDER);
    for &(name, value) in &a.tunables.given {
        check
            .set(name, value)
            .map_err(|e| anyhow::anyhow!("--{name}: {e}"))?;
    }
    let listen = match (a.socket, a.listen) {
        (Some(p), _) => Listen::Unix(p),
        (None, Some(given)) => {
            let addrs = resolve_listen(&given)?;
            if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                if !a.allow_remote {
                    anyhow::bail!(
                        "--listen {given}: {} is not a loopback address; NBD has no \
                         authentication here, so pass --allow_remote to serve other machines",
                        remote.ip()
                    );
                }
            }
            Listen::Tcp { given, addrs }
        }
        (None, None) => unreachable!("clap requires --socket or --listen"),
    };
    let control = match (&a.control, &listen) {
        (Some(p), _) => p.clone(),
        (None, Listen::Unix(s)) => control_of_socket(s),
        (None, Listen::Tcp { .. }) => default_control(),
    };
    server::run(ServeOptions {
        backing: a.backing,
        cache: a.cache,
        plog: a.plog,
        listen,
        control,
        tunables: a.tunables.given,
        nr_rambuf_pool: a.nr_rambuf_pool,
        io_mode: if a.buffered {
            IoMode::Buffered
        } else {
            IoMode::DirectIfSupported
        },
        io_engine: a.io_engine,
        write_back_ahead: !a.no_write_back_ahead,
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Format {
            cache,
            plog,
            order,
            force,
        } => commands::format_cache(&cache, plog.as_ref(), order, force),
        Cmd::Serve(a) => serve(*a),
        Cmd::Status { json, control } => commands::status(&control_path(&control), json),
        Cmd::Message { words, control } => commands::message(&control_path(&control), &words),
        Cmd::Writeback {
            backing,
            cache,
            plog,
        } => commands::writeback(&backing, &cache, plog.as_ref()),
        Cmd::Check {
            cache,
            plog,
            backing,
            json,
        } => {
            return match commands::check(&cache.spec(), plog.as_ref(), backing.as_ref(), json) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("wbcache: error: {e:#}");
                    ExitCode::from(commands::CHECK_ERROR)
                }
            }
        }
        Cmd::Dump {
            cache,
            segment,
            plog,
            json,
        } => commands::dump(&cache.spec(), plog.as_ref(), segment, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wbcache: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
