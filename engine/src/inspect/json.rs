//! The JSON rendering of check and dump reports (hand-written: the project has no serde).

use crate::format::plog::PlogSuperblock;
use crate::format::Geometry;
use crate::recovery::RecoveryReport;

use super::*;

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON object from already-encoded values.
fn json_obj(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{}", json_str(k), v))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn json_arr(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(","))
}

fn json_opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "null".to_string(), f)
}

fn json_superblock(sb: &SuperblockInfo) -> String {
    json_obj(&[
        ("kind", json_str(sb.kind.as_str())),
        ("magic", sb.magic.to_string()),
        (
            "extension",
            json_opt(sb.ext, |e| {
                json_obj(&[
                    ("format_version", e.format_version.to_string()),
                    ("segment_size_order", e.order.to_string()),
                    ("cache_type", e.cache_type.to_string()),
                    ("flags", e.flags.to_string()),
                    ("generation", e.generation.to_string()),
                    ("cache_sectors", e.cache_sectors.to_string()),
                ])
            }),
        ),
    ])
}

fn json_records(r: &Option<RecordInfo>) -> String {
    json_opt(r.as_ref(), |r| {
        let copy = |c: &RecordCopy| {
            json_obj(&[
                ("sector", c.sector.to_string()),
                ("raw_id", c.raw_id.to_string()),
                (
                    "extension",
                    json_opt(c.ext, |e| {
                        json_obj(&[
                            ("last_writeback_id", e.last_writeback_id.to_string()),
                            ("flags", e.flags.to_string()),
                            ("generation", e.generation.to_string()),
                        ])
                    }),
                ),
                ("valid", c.valid.to_string()),
            ])
        };
        json_obj(&[
            ("primary", copy(&r.primary)),
            ("backup", copy(&r.backup)),
            ("interrupted_format", r.interrupted_format.to_string()),
            ("record", json_opt(r.record, |v| v.to_string())),
            ("source", json_opt(r.source, |s| json_str(s.as_str()))),
        ])
    })
}

fn json_geometry(g: &Option<Geometry>) -> String {
    json_opt(g.as_ref(), |g| {
        json_obj(&[
            ("order", g.order.to_string()),
            ("nr_segments", g.nr_segments.to_string()),
            ("segment_sectors", g.segment_sectors().to_string()),
            ("blocks_per_segment", g.blocks_per_segment().to_string()),
        ])
    })
}

fn json_plog_sb(sb: &PlogSuperblock) -> String {
    json_obj(&[
        ("version", sb.version.to_string()),
        ("generation", sb.generation.to_string()),
        ("epoch", sb.epoch.to_string()),
        ("plog_sectors", sb.plog_sectors.to_string()),
        ("region_sectors", sb.geometry.region_sectors.to_string()),
        ("nr_regions", sb.geometry.nr_regions.to_string()),
        ("segment_order", sb.segment_order.to_string()),
    ])
}

fn json_problem(p: &Problem) -> String {
    json_obj(&[
        ("kind", json_str(p.kind.as_str())),
        ("detail", json_str(&p.detail)),
    ])
}

fn json_plog_info(p: &PlogInfo) -> String {
    json_obj(&[
        ("device_sectors", p.device_sectors.to_string()),
        (
            "superblock_copies",
            json_arr(p.copies.iter().map(|c| {
                json_obj(&[
                    ("name", json_str(c.name.as_str())),
                    ("sector", c.sector.to_string()),
                    ("superblock", json_opt(c.superblock.as_ref(), json_plog_sb)),
                    ("generation_matches", c.generation_matches.to_string()),
                ])
            })),
        ),
        ("superblock", json_opt(p.superblock.as_ref(), json_plog_sb)),
        ("problem", json_opt(p.problem.as_ref(), json_problem)),
        (
            "regions",
            json_arr(p.regions.iter().map(|r| {
                json_obj(&[
                    ("region", r.region.to_string()),
                    ("sector", r.sector.to_string()),
                    ("state", json_str(r.state.as_str())),
                    (
                        "first",
                        json_opt(r.first.as_ref(), |h| {
                            json_obj(&[
                                ("segment_id", h.segment_id.to_string()),
                                ("generation", h.generation.to_string()),
                                ("epoch", h.epoch.to_string()),
                                ("seq", h.seq.to_string()),
                                ("prev_entries", h.prev_entries.to_string()),
                            ])
                        }),
                    ),
                    ("valid_entries", r.valid_entries.to_string()),
                    ("sectors_used", r.sectors_used.to_string()),
                    (
                        "backing_sectors_needed",
                        r.backing_sectors_needed.to_string(),
                    ),
                ])
            })),
        ),
    ])
}

fn json_recovery(r: &RecoveryReport) -> String {
    json_obj(&[
        ("record", r.record.to_string()),
        ("written_back", r.written_back.to_string()),
        ("segments_applied", r.segments_applied.to_string()),
        ("last_applied", r.last_applied.to_string()),
        ("replay_writebacks", r.replay_writebacks.to_string()),
        ("dirty_blocks", r.dirty_blocks.to_string()),
        ("stop_reason", json_opt(r.stop_reason.as_deref(), json_str)),
        ("stale_invalidated", r.stale_invalidated.to_string()),
        ("plog_segments_rebuilt", r.plog_segments_rebuilt.to_string()),
        ("plog_entries_replayed", r.plog_entries_replayed.to_string()),
        ("plog_regions_voided", r.plog_regions_voided.to_string()),
        ("plog_epoch", r.plog_epoch.to_string()),
    ])
}

impl CheckReport {
    /// The whole report as one JSON object (every non-empty slot listed).
    pub fn to_json(&self) -> String {
        let c = &self.slot_counts;
        let replay = json_opt(self.replay.as_ref(), |r| {
            let (reason, found) = match r.stop.reason {
                StopReason::OtherId { found } => (r.stop.reason.as_str(), Some(found)),
                other => (other.as_str(), None),
            };
            json_obj(&[
                ("record", r.record.to_string()),
                ("written_back", r.written_back.to_string()),
                ("replay_writebacks", r.replay_writebacks.to_string()),
                ("segments_applied", r.segments_applied.to_string()),
                ("last_applied", r.last_applied.to_string()),
                ("dirty_blocks", r.dirty_blocks.to_string()),
                (
                    "stop",
                    json_obj(&[
                        ("id", r.stop.id.to_string()),
                        ("slot", r.stop.slot.to_string()),
                        ("reason", json_str(reason)),
                        ("found", json_opt(found, |v| v.to_string())),
                    ]),
                ),
                ("invalidated_slots", r.invalidated_slots.to_string()),
                (
                    "backing_sectors_needed",
                    r.backing_sectors_needed.to_string(),
                ),
            ])
        });
        let plog = json_opt(self.plog.as_ref(), |p| {
            json_obj(&[
                ("info", json_plog_info(&p.info)),
                ("recovery", json_opt(p.recovery.as_ref(), json_recovery)),
            ])
        });
        json_obj(&[
            ("sound", self.sound.to_string()),
            ("device_sectors", self.device_sectors.to_string()),
            ("superblock", json_superblock(&self.superblock)),
            ("records", json_records(&self.records)),
            ("geometry", json_geometry(&self.geometry)),
            (
                "slot_counts",
                json_obj(&[
                    ("empty", c.empty.to_string()),
                    ("valid", c.valid.to_string()),
                    ("stale", c.stale.to_string()),
                    ("unreachable", c.unreachable.to_string()),
                    ("torn", c.torn.to_string()),
                    ("misplaced", c.misplaced.to_string()),
                ]),
            ),
            ("replay", replay),
            (
                "problems",
                json_arr(self.problems.iter().map(|p| {
                    json_obj(&[
                        ("kind", json_str(p.kind.as_str())),
                        ("detail", json_str(&p.detail)),
                    ])
                })),
            ),
            (
                "notes",
                json_arr(self.notes.iter().map(|n| {
                    json_obj(&[
                        ("kind", json_str(n.kind.as_str())),
                        ("detail", json_str(&n.detail)),
                    ])
                })),
            ),
            ("plog", plog),
            (
                "slots",
                json_arr(self.slots.iter().map(|s| {
                    json_obj(&[
                        ("slot", s.slot.to_string()),
                        ("id", s.id.to_string()),
                        ("length", s.length.to_string()),
                        ("class", json_str(s.class.as_str())),
                        ("length_ok", s.length_ok.to_string()),
                        ("checksum_ok", s.checksum_ok.to_string()),
                        ("dirty_metablocks", s.dirty_metablocks.to_string()),
                        ("bad_block_crcs", s.bad_block_crcs.to_string()),
                        ("unaligned_metablocks", s.unaligned_metablocks.to_string()),
                    ])
                })),
            ),
        ])
    }
}

impl Dump {
    /// The whole dump as one JSON object.
    pub fn to_json(&self) -> String {
        json_obj(&[
            ("device_sectors", self.device_sectors.to_string()),
            ("superblock", json_superblock(&self.superblock)),
            ("records", json_records(&self.records)),
            ("geometry", json_geometry(&self.geometry)),
            ("requested", json_opt(self.requested, |v| v.to_string())),
            (
                "missing",
                json_opt(self.missing, |m| {
                    json_obj(&[
                        ("id", m.id.to_string()),
                        ("slot", json_opt(m.slot, |v| v.to_string())),
                        ("found", m.found.to_string()),
                    ])
                }),
            ),
            ("unreadable", json_opt(self.unreadable.as_deref(), json_str)),
            ("plog", json_opt(self.plog.as_ref(), json_plog_info)),
            (
                "segments",
                json_arr(self.segments.iter().map(|s| {
                    json_obj(&[
                        ("slot", s.slot.to_string()),
                        ("id", s.id.to_string()),
                        ("length", s.length.to_string()),
                        ("checksum", s.checksum.to_string()),
                        ("length_ok", s.length_ok.to_string()),
                        ("checksum_ok", s.checksum_ok.to_string()),
                        ("in_its_slot", s.in_its_slot.to_string()),
                        ("blocks_omitted", s.blocks_omitted.to_string()),
                        (
                            "blocks",
                            json_arr(s.blocks.iter().map(|b| {
                                json_obj(&[
                                    ("index", b.index.to_string()),
                                    ("sector", b.sector.to_string()),
                                    ("dirty_bits", b.dirty_bits.to_string()),
                                    ("crc", json_opt(b.crc, |v| v.to_string())),
                                    ("crc_ok", json_opt(b.crc_ok, |v| v.to_string())),
                                ])
                            })),
                        ),
                    ])
                })),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
        assert_eq!(
            json_obj(&[("k", json_str("v")), ("n", "1".into())]),
            "{\"k\":\"v\",\"n\":1}"
        );
        assert_eq!(json_arr(Vec::<String>::new()), "[]");
    }
}
