//! A crash choice: which pending writes persist (and how torn), plus optional bit flips. Prints
//! as one short token so a failure can name it in a replay command, and parses back.

use crate::ChoiceError;
use engine::DeviceRole;
use std::fmt;
use std::str::FromStr;

/// Which atomic units of a persisted write reached the media.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Units {
    All,
    /// One flag per atomic unit, in address order. A unit that did not persist keeps its old
    /// content, or what the device's `torn_fill` says (zeros, garbage).
    Mask(Vec<bool>),
}

/// One pending write that persists.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Persist {
    /// Index into [`crate::CrashState::pending`].
    pub pending: usize,
    pub units: Units,
}

/// Flip `bit` of `byte` of a device's crash image (bit rot found after the power cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BitFlip {
    pub role: DeviceRole,
    pub byte: u64,
    pub bit: u8,
}

/// What the power cut did. Persisted writes are applied in the order listed, so where several
/// cover a sector the last listed wins: listing them in log order is the natural outcome, any
/// other order picks an older version (the media model allows any one of the pending versions:
/// docs/DESIGN.md, "Media assumptions" 4).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Choice {
    pub persisted: Vec<Persist>,
    pub bit_flips: Vec<BitFlip>,
}

impl Choice {
    /// Nothing pending persisted: the durable images.
    pub fn none() -> Self {
        Choice::default()
    }

    /// The given pending writes persist whole, applied in the order given.
    pub fn whole(indices: impl IntoIterator<Item = usize>) -> Self {
        Choice {
            persisted: indices
                .into_iter()
                .map(|pending| Persist {
                    pending,
                    units: Units::All,
                })
                .collect(),
            bit_flips: Vec::new(),
        }
    }
}

fn role_name(role: DeviceRole) -> &'static str {
    match role {
        DeviceRole::Backing => "backing",
        DeviceRole::Cache => "cache",
        DeviceRole::Plog => "plog",
    }
}

/// Format: `-` for nothing; else comma-separated items: `3` (pending write 3 whole), `3:0110`
/// (pending write 3, units 1 and 2 persisted), `!cache@1234.5` (flip bit 5 of byte 1234).
impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.persisted.is_empty() && self.bit_flips.is_empty() {
            return f.write_str("-");
        }
        let mut items: Vec<String> = Vec::new();
        for p in &self.persisted {
            items.push(match &p.units {
                Units::All => p.pending.to_string(),
                Units::Mask(m) => {
                    let bits: String = m.iter().map(|&b| if b { '1' } else { '0' }).collect();
                    format!("{}:{bits}", p.pending)
                }
            });
        }
        for b in &self.bit_flips {
            items.push(format!("!{}@{}.{}", role_name(b.role), b.byte, b.bit));
        }
        f.write_str(&items.join(","))
    }
}

impl FromStr for Choice {
    type Err = ChoiceError;

    fn from_str(text: &str) -> Result<Self, ChoiceError> {
        let err = |detail: &str| ChoiceError::Parse {
            text: text.to_string(),
            detail: detail.to_string(),
        };
        let mut choice = Choice::none();
        if text.trim() == "-" {
            return Ok(choice);
        }
        for item in text.split(',').map(str::trim) {
            if let Some(flip) = item.strip_prefix('!') {
                let (role, rest) = flip
                    .split_once('@')
                    .ok_or_else(|| err("bit flip needs @"))?;
                let (byte, bit) = rest
                    .split_once('.')
                    .ok_or_else(|| err("bit flip needs ."))?;
                let role = match role {
                    "backing" => DeviceRole::Backing,
                    "cache" => DeviceRole::Cache,
                    "plog" => DeviceRole::Plog,
                    _ => return Err(err("unknown device role")),
                };
                choice.bit_flips.push(BitFlip {
                    role,
                    byte: byte.parse().map_err(|_| err("bad byte offset"))?,
                    bit: bit.parse().map_err(|_| err("bad bit number"))?,
                });
            } else {
                let (index, mask) = match item.split_once(':') {
                    Some((i, m)) => (i, Some(m)),
                    None => (item, None),
                };
                let pending = index.parse().map_err(|_| err("bad pending index"))?;
                let units = match mask {
                    None => Units::All,
                    Some(m) => Units::Mask(
                        m.chars()
                            .map(|c| match c {
                                '1' => Ok(true),
                                '0' => Ok(false),
                                _ => Err(err("unit mask is 0s and 1s")),
                            })
                            .collect::<Result<_, _>>()?,
                    ),
                };
                choice.persisted.push(Persist { pending, units });
            }
        }
        Ok(choice)
    }
}
