//! Turning bytes and history positions into words for violation reports. Only runs on failure,
//! so it may scan the whole history.

use crate::violation::{Oracle, Origin, Violation};
use crate::{History, OpId, SECTOR_SIZE};

/// How many values or ranges a report lists before it elides the rest.
const LIST_LIMIT: usize = 8;

/// A short hex rendering: `00×512` for a uniform sector, else the first 16 bytes.
pub(crate) fn hex_prefix(bytes: &[u8]) -> String {
    match bytes.first() {
        None => "(empty)".to_string(),
        Some(&b) if bytes.iter().all(|&x| x == b) => format!("{b:02x}×{}", bytes.len()),
        Some(_) => {
            let hex: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
            if bytes.len() > 16 {
                format!("{hex}…")
            } else {
                hex
            }
        }
    }
}

/// Where `observed` (the content of sector `s`) came from.
pub(crate) fn identify(h: &History, s: u64, observed: &[u8]) -> Origin {
    let ops = h.ops();
    if let Some(i) = (0..ops.len())
        .rev()
        .find(|&i| h.written_sector(i, s) == Some(observed))
    {
        return Origin::Write(OpId(i as u64));
    }
    if h.initial_sector(s) == observed {
        return Origin::Initial;
    }
    for (i, op) in ops.iter().enumerate().rev() {
        if let Some((sector, sectors)) = op.write_range() {
            if let Some(other) =
                (sector..sector + sectors).find(|&o| h.written_sector(i, o) == Some(observed))
            {
                return Origin::WriteToSector {
                    op: OpId(i as u64),
                    sector: other,
                };
            }
        }
    }
    if let Some(other) = h
        .initial()
        .chunks_exact(SECTOR_SIZE)
        .position(|c| c == observed)
    {
        return Origin::InitialOfSector(other as u64);
    }
    Origin::Unknown
}

/// Renders the value a write index (or the initial content, `None`) gives a sector.
pub(crate) fn value_name(op_index: Option<usize>) -> String {
    match op_index {
        None => "initial content".to_string(),
        Some(i) => OpId(i as u64).to_string(),
    }
}

/// Joins up to [`LIST_LIMIT`] items with ", ", noting how many were left out.
pub(crate) fn join_limited(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    let mut out = items
        .iter()
        .take(LIST_LIMIT)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > LIST_LIMIT {
        out.push_str(&format!(", … ({} more)", items.len() - LIST_LIMIT));
    }
    out
}

pub(crate) fn check_size(h: &History, oracle: Oracle, observed: &[u8]) -> Result<(), Violation> {
    if observed.len() != h.initial().len() {
        return Err(Violation::SizeMismatch {
            oracle,
            expected: h.initial().len(),
            observed: observed.len(),
        });
    }
    Ok(())
}

/// `here`: the content of sector `s`.
pub(crate) fn bad_sector(
    h: &History,
    oracle: Oracle,
    s: u64,
    here: &[u8],
    allowed: String,
) -> Violation {
    let observed = here;
    Violation::BadSector {
        oracle,
        sector: s,
        observed: hex_prefix(observed),
        origin: identify(h, s, observed),
        allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_prefix_is_short() {
        assert_eq!(hex_prefix(&[0; 512]), "00×512");
        let mut v = vec![0u8; 512];
        v[1] = 0xab;
        assert_eq!(hex_prefix(&v), "00ab0000000000000000000000000000…");
        assert_eq!(
            join_limited((0..10).map(|i| i.to_string())),
            "0, 1, 2, 3, 4, 5, 6, 7, … (2 more)"
        );
    }
}
