//! Seeded workloads whose every sector the host can regenerate and recognise, shared by the
//! host (model, NBD client, checks) and the guest (the writer running under the real kernel).
//!
//! Each 512-byte sector a workload writes names itself: magic, seed, op id and backing sector
//! in its first 32 bytes, then bytes derived from those. Op 0 is the backing device's initial
//! content. So a recovered image is judged sector by sector: which op's data is there, intact,
//! and at the right place.

use std::fmt::Write as _;

pub const SECTOR: usize = 512;
const MAGIC: &[u8; 8] = b"WBKIsect";

/// One step of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Write `len` sectors at `sector`, the data of op `id`.
    Write { id: u32, sector: u64, len: u32 },
    /// A FLUSH (fdatasync on the guest's device, NBD FLUSH on the host); every write before
    /// it is durable once it completes.
    Flush,
    /// Pause (milliseconds), so that the kernel's timed daemons (the superblock record
    /// updater) run in the middle of the workload.
    Sleep(u32),
}

/// What a workload is, as a compact string the host passes on the guest's kernel command
/// line: `seed,first_id,writes,region,max_len,flush_every,sleep_every,sleep_ms,sleep_until,tail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    pub seed: u64,
    /// The id of the first write (ids go on across the phases of a round trip).
    pub first_id: u32,
    /// Writes before the tail.
    pub writes: u32,
    /// Writes land in sectors `[0, region)`.
    pub region: u64,
    /// At most this many sectors per write (1..=64).
    pub max_len: u32,
    /// A FLUSH after every this many writes (0 = none), and one after the last write
    /// before the tail.
    pub flush_every: u32,
    /// A pause after every this many writes (0 = none).
    pub sleep_every: u32,
    pub sleep_ms: u32,
    /// No pauses after this many writes (0 = pauses all along).
    pub sleep_until: u32,
    /// Writes after the last FLUSH (lost or not, as the end decides).
    pub tail: u32,
}

impl Spec {
    pub fn encode(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{}",
            self.seed,
            self.first_id,
            self.writes,
            self.region,
            self.max_len,
            self.flush_every,
            self.sleep_every,
            self.sleep_ms,
            self.sleep_until,
            self.tail
        )
    }

    pub fn decode(s: &str) -> Result<Spec, String> {
        let v: Vec<u64> = s
            .split(',')
            .map(|x| {
                x.parse::<u64>()
                    .map_err(|e| format!("workload spec {s:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        if v.len() != 10 {
            return Err(format!("workload spec {s:?}: want 10 numbers"));
        }
        let u = |x: u64| u32::try_from(x).map_err(|e| format!("workload spec {s:?}: {e}"));
        Ok(Spec {
            seed: v[0],
            first_id: u(v[1])?,
            writes: u(v[2])?,
            region: v[3],
            max_len: u(v[4])?,
            flush_every: u(v[5])?,
            sleep_every: u(v[6])?,
            sleep_ms: u(v[7])?,
            sleep_until: u(v[8])?,
            tail: u(v[9])?,
        })
    }

    /// The ops, the same on host and guest. Writes are sector-granular (partial blocks and
    /// runs across block boundaries) and two thirds of them fall in the first eighth of the
    /// region, so blocks are overwritten in the RAM buffer, in the log and partly.
    pub fn ops(&self) -> Vec<Op> {
        let mut rng =
            SplitMix(self.seed ^ 0x6b69_6e74_6572_6f70 ^ (u64::from(self.first_id) << 32));
        let mut ops = Vec::new();
        let mut id = self.first_id;
        let hot = (self.region / 8).max(64);
        let mut write = |rng: &mut SplitMix, ops: &mut Vec<Op>| {
            let len = 1 + (rng.next() % u64::from(self.max_len)) as u32;
            let span = if rng.next() % 3 != 0 {
                hot
            } else {
                self.region
            };
            let sector = rng.next() % (span - u64::from(len));
            ops.push(Op::Write { id, sector, len });
            id += 1;
        };
        for i in 1..=self.writes {
            write(&mut rng, &mut ops);
            if self.flush_every != 0 && i % self.flush_every == 0 {
                ops.push(Op::Flush);
            }
            if self.sleep_every != 0
                && i % self.sleep_every == 0
                && (self.sleep_until == 0 || i <= self.sleep_until)
            {
                ops.push(Op::Sleep(self.sleep_ms));
            }
        }
        if ops.last() != Some(&Op::Flush) {
            ops.push(Op::Flush);
        }
        for _ in 0..self.tail {
            write(&mut rng, &mut ops);
        }
        ops
    }
}

pub struct SplitMix(pub u64);
impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The content of `sector` written by op `id` of a workload with `seed` (op 0: the
/// backing device's initial content).
pub fn fill_sector(buf: &mut [u8], seed: u64, id: u32, sector: u64) {
    buf[..8].copy_from_slice(MAGIC);
    buf[8..16].copy_from_slice(&seed.to_le_bytes());
    buf[16..20].copy_from_slice(&id.to_le_bytes());
    buf[20..24].copy_from_slice(&0u32.to_le_bytes());
    buf[24..32].copy_from_slice(&sector.to_le_bytes());
    let mut rng = SplitMix(seed ^ (u64::from(id) << 40) ^ sector.wrapping_mul(0x1000_0000_01b3));
    for chunk in buf[32..SECTOR].chunks_mut(8) {
        chunk.copy_from_slice(&rng.next().to_le_bytes()[..chunk.len()]);
    }
}

/// What a sector holds: `Some(id)` when it is the intact data of op `id` of this seed for
/// this very sector, `None` for anything else (zeros, another sector's data, a torn mix).
pub fn identify(buf: &[u8], seed: u64, sector: u64) -> Option<u32> {
    if &buf[..8] != MAGIC || buf[8..16] != seed.to_le_bytes() {
        return None;
    }
    let id = u32::from_le_bytes(buf[16..20].try_into().unwrap());
    let mut want = [0u8; SECTOR];
    fill_sector(&mut want, seed, id, sector);
    (want[..] == buf[..SECTOR]).then_some(id)
}

/// A short description of a sector for reports.
pub fn describe(buf: &[u8], seed: u64, sector: u64) -> String {
    match identify(buf, seed, sector) {
        Some(0) => "the initial backing data".into(),
        Some(id) => format!("op {id}"),
        None if buf.iter().all(|&b| b == 0) => "zeros".into(),
        None if &buf[..8] == MAGIC => format!(
            "data of op {} for sector {}",
            u32::from_le_bytes(buf[16..20].try_into().unwrap()),
            u64::from_le_bytes(buf[24..32].try_into().unwrap())
        ),
        None => "unrecognised bytes".into(),
    }
}

/// The backing device's initial content (op 0) for `sectors` sectors.
pub fn initial_image(seed: u64, sectors: u64) -> Vec<u8> {
    let mut img = vec![0u8; sectors as usize * SECTOR];
    for (s, buf) in img.chunks_mut(SECTOR).enumerate() {
        fill_sector(buf, seed, 0, s as u64);
    }
    img
}

/// The data of a write op, `len` sectors.
pub fn write_data(seed: u64, id: u32, sector: u64, len: u32) -> Vec<u8> {
    let mut d = vec![0u8; len as usize * SECTOR];
    for (i, buf) in d.chunks_mut(SECTOR).enumerate() {
        fill_sector(buf, seed, id, sector + i as u64);
    }
    d
}

/// What the host knows a device should hold after some workloads ran on it.
pub struct Model {
    pub seed: u64,
    /// Per sector, the ops that wrote it, in order (op 0, the initial data, first).
    history: Vec<Vec<u32>>,
    /// Per sector, how many entries of `history` a completed FLUSH covers.
    flushed: Vec<usize>,
    /// Writes since the last completed FLUSH: (sector, len).
    pending: Vec<(u64, u32)>,
}

impl Model {
    pub fn new(seed: u64, sectors: u64) -> Model {
        Model {
            seed,
            history: vec![vec![0]; sectors as usize],
            flushed: vec![1; sectors as usize],
            pending: Vec::new(),
        }
    }

    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { id, sector, len } => {
                for s in sector..sector + u64::from(len) {
                    self.history[s as usize].push(id);
                }
                self.pending.push((sector, len));
            }
            Op::Flush => {
                for (sector, len) in self.pending.drain(..) {
                    for s in sector..sector + u64::from(len) {
                        self.flushed[s as usize] = self.history[s as usize].len();
                    }
                }
            }
            Op::Sleep(_) => {}
        }
    }

    /// Every write so far is durable (a clean shutdown completed).
    pub fn all_durable(&mut self) {
        self.apply(&Op::Flush);
    }

    /// The ops a sector may hold: with `exact`, its last write; otherwise its last flushed
    /// write or a later one.
    fn allowed(&self, s: usize, exact: bool) -> &[u32] {
        let hist = &self.history[s];
        if exact {
            &hist[hist.len() - 1..]
        } else {
            &hist[self.flushed[s] - 1..]
        }
    }

    /// Whether `buf` is an allowed content of sector `s`.
    pub fn sector_ok(&self, buf: &[u8], s: u64, exact: bool) -> bool {
        matches!(identify(buf, self.seed, s), Some(id) if self.allowed(s as usize, exact).contains(&id))
    }

    /// Judges an image of the device (see `allowed`).
    pub fn judge(&self, img: &[u8], exact: bool) -> Verdict {
        let mut v = Verdict::default();
        for (s, buf) in img.chunks(SECTOR).enumerate().take(self.history.len()) {
            if !self.sector_ok(buf, s as u64, exact) {
                v.bad += 1;
                if v.first.is_none() {
                    let allowed = self.allowed(s, exact);
                    let mut why = String::new();
                    let _ = write!(
                        why,
                        "sector {s} holds {}; allowed: {}",
                        describe(buf, self.seed, s as u64),
                        allowed
                            .iter()
                            .map(|&id| if id == 0 {
                                "the initial backing data".to_string()
                            } else {
                                format!("op {id}")
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    v.first = Some(why);
                }
            }
        }
        if (img.len() / SECTOR) < self.history.len() {
            v.bad += self.history.len() as u64 - (img.len() / SECTOR) as u64;
            v.first
                .get_or_insert_with(|| format!("image has only {} sectors", img.len() / SECTOR));
        }
        v
    }
}

#[derive(Default, Debug)]
pub struct Verdict {
    pub bad: u64,
    pub first: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_and_ops_are_deterministic() {
        let spec = Spec {
            seed: 7,
            first_id: 1,
            writes: 100,
            region: 4096,
            max_len: 16,
            flush_every: 10,
            sleep_every: 50,
            sleep_ms: 5,
            sleep_until: 0,
            tail: 3,
        };
        assert_eq!(Spec::decode(&spec.encode()).unwrap(), spec);
        assert_eq!(spec.ops(), spec.ops());
        let writes = spec
            .ops()
            .iter()
            .filter(|o| matches!(o, Op::Write { .. }))
            .count();
        assert_eq!(writes, 103);
    }

    #[test]
    fn model_judges_exact_and_flushed() {
        let seed = 3;
        let mut m = Model::new(seed, 16);
        let mut img = initial_image(seed, 16);
        let w1 = Op::Write {
            id: 1,
            sector: 2,
            len: 2,
        };
        let w2 = Op::Write {
            id: 2,
            sector: 3,
            len: 1,
        };
        m.apply(&w1);
        m.apply(&Op::Flush);
        m.apply(&w2);
        // Nothing applied: sectors 2 and 3 lost a flushed write.
        assert_eq!(m.judge(&img, false).bad, 2);
        img[2 * SECTOR..4 * SECTOR].copy_from_slice(&write_data(seed, 1, 2, 2));
        assert_eq!(m.judge(&img, false).bad, 0);
        assert_eq!(m.judge(&img, true).bad, 1);
        img[3 * SECTOR..4 * SECTOR].copy_from_slice(&write_data(seed, 2, 3, 1));
        assert_eq!(m.judge(&img, true).bad, 0);
        // Data at the wrong place is caught.
        img.copy_within(2 * SECTOR..3 * SECTOR, 5 * SECTOR);
        let v = m.judge(&img, false);
        assert_eq!(v.bad, 1);
        assert!(v
            .first
            .unwrap()
            .contains("sector 5 holds data of op 1 for sector 2"));
    }
}
