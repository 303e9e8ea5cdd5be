//! Hand-written workloads, one per hazard of SPEC §6, named after it. Each drives the engine into
//! the situation the seed got wrong; crash-test explores every crash state of each like any other
//! workload. H4, H7, H8, H9, `h10-plog` and the plog-region scenarios run a type-1 cache
//! (`t=1`, `g=` plog regions).

use super::workload::Workload;

/// (name, what it provokes, workload text).
pub const SCENARIOS: [(&str, &str, &str); 28] = [
    (
        "h1",
        "a torn write into the slot being reused, which the seed's replay scanned first",
        "o=4,n=2,b=4,p=1,k=1,u=1,s=101;W0+8.F.W8+8.F.B.R.W16+8.F.W24+8.F",
    ),
    (
        "h2",
        "a previous-lap segment left in a slot whose new write was lost",
        "o=4,n=2,b=4,p=2,k=1,u=1,s=102;W0+8.W8+8.F.B.R.W0+8.W8+8.F",
    ),
    (
        "h3",
        "valid segments past a torn one, accepted again once their ids come back",
        "o=4,n=4,b=4,p=4,k=1,u=1,s=103;W0+8.W8+8.W16+8.F.W0+8.W8+8.F",
    ),
    (
        "h5",
        "a record written while the newer copy of an overwritten block is not durable",
        "o=4,n=4,b=4,p=2,k=1,u=1,s=105;W0+8.F.W0+8.B.R.W8+8.F",
    ),
    (
        "h6",
        "segments at or below the record, which the seed replayed as dirty",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=106;W0+8.W8+8.F.B.B.R.W16+8.F",
    ),
    (
        "h10",
        "a format over an old cache (drained, shut down, formatted again), cut anywhere",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=110;W0+8.W8+8.F.W0+8.X.W16+8.F",
    ),
    (
        "h11",
        "FLUSH with nothing new (the seed emitted an empty segment)",
        "o=4,n=3,b=4,p=2,k=1,u=1,s=111;F.W0+8.F.F.W8+8.F",
    ),
    (
        "h12",
        "a partial overwrite of a dirty block that is on the cache device",
        "o=5,n=3,b=4,p=1,k=1,u=1,s=112;W0+8.F.G.W1+2.F.B.R.W2+1.F",
    ),
    (
        "h13",
        "writeback of old data around a newer copy of the same block",
        "o=4,n=3,b=4,p=1,k=2,u=1,s=113;W0+8.F.W0+8.F.B.W0+3.B.F",
    ),
    (
        "h14",
        "a discard of a block whose dirty copy is cached",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=114;W0+8.F.Z0+8.F.B.R",
    ),
    (
        "lc-nochecksum",
        "a segment whose header persisted but whose data did not",
        "o=5,n=3,b=6,p=1,k=1,u=1,s=115;W0+8.W8+8.W16+8.F",
    ),
    (
        "wc-ignore-fua",
        "a FUA write with no FLUSH after it: the write alone must be durable when acknowledged",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=116;W0+8.U8+8",
    ),
    (
        "h4",
        "plog entries of a previous format at the very place a lost new entry should be",
        "o=5,n=4,b=4,p=2,k=1,u=1,s=104,t=1,g=2;W16+8.W8+8.F.X.W8+8.F.W24+8.F",
    ),
    (
        "h7",
        "a plog region needed again while its segment is only written, not durable",
        "o=4,n=4,b=4,p=1,k=1,u=1,s=107,t=1,g=2;W0+8.F.W8+8.W16+8.F",
    ),
    (
        "h8",
        "a plog region that lost an entry, followed by another region with entries",
        "o=5,n=4,b=8,p=2,k=1,u=1,s=108,t=1,g=3;W0+8.W8+8.W16+8.W24+8.F",
    ),
    (
        "h9",
        "recovery with another nr_rambuf_pool than the run had (P=)",
        "o=4,n=4,b=4,p=1,k=1,u=1,s=109,t=1,g=4,P=3;W0+8.W8+8.W16+8.F",
    ),
    (
        "h10-plog",
        "a format over an old type-1 cache whose plog still holds entries, cut anywhere",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=110,t=1,g=2;W0+8.W8+8.F.W0+8.X.W16+8.F",
    ),
    // Plog regions at their boundary (a region takes two entries per block of its segment).
    (
        "plog-region-exact",
        "six overwrites of one block fill its segment's region to the last sector; the next write seals",
        "o=5,n=3,b=4,p=1,k=1,u=1,s=126,t=1,g=2;W0+8.W0+8.W0+8.W0+8.W0+8.W0+8.F.W8+8.F",
    ),
    (
        "plog-region-gap",
        "small entries leave a region a gap too small for the next full-block entry, which seals",
        "o=5,n=3,b=4,p=1,k=1,u=1,s=127,t=1,g=2;W0+8.W0+8.W0+8.W0+8.W0+8.W2+1.W2+1.W0+8.F",
    ),
    // Completion order: these need operations in flight together, completing out of order.
    (
        "wc-flush-order",
        "a FLUSH whose segment write is still in flight when a flush could be issued",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=121;W0+8.F.W8+8.F",
    ),
    (
        "flush-ack-inflight",
        "a FLUSH that arrives while an earlier cache flush (a sync's) is still in flight",
        "o=4,n=3,b=4,p=2,k=1,u=1,s=122,c=x0:1;W0+8.y.W8+8.F",
    ),
    (
        "wb-flush-early",
        "a writeback batch whose backing writes complete after its backing flush could",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=123,c=x2:1;W0+8.W8+8.F.B.R",
    ),
    (
        "record-before-log",
        "a record written while the log holding a newer copy of a skipped block is in flight",
        "o=4,n=4,b=4,p=2,k=1,u=1,s=124;W0+8.F.W0+8.B.R",
    ),
    // The peer: what dm-writeboost's replay would make of the ring (crate::peer).
    (
        "partial-copies",
        "a block written in part in two segments, both written back and recorded",
        "o=4,n=4,b=4,p=1,k=1,u=1,s=125;W0+2.F.W1+2.F.B.R.W8+8.F",
    ),
    // Sequential bypass (`x=` bytes of stream): writes past the cutoff go to the backing device.
    (
        "bypass",
        "streams past the cutoff written straight to the backing device, a FUA one, FLUSHes after",
        "o=4,n=3,b=6,p=1,k=1,u=1,s=128,x=8192;W0+8.F.B.R.W0+16.W16+8.F.M0+24.U24+16.W0+8.F.B.R",
    ),
    (
        "bypass-stale-writeback",
        "a stream over a block written back whose segment the record does not cover yet",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=129,x=8192;W0+8.F.B.W0+16.F.M0+16",
    ),
    (
        "bypass-stale-read",
        "a stream over a block whose dirty copy is cached, read back",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=130,x=8192;W0+8.F.W0+16.M0+16.F.B.R.M0+16",
    ),
    // A clean copy kept after writeback (R17), read, then a stream over it bypasses the cache.
    (
        "clean-copy",
        "a block written back and recorded, read from its clean copy, then a stream over it \
         bypassed and read back",
        "o=4,n=3,b=4,p=1,k=1,u=1,s=131,x=8192;W0+8.F.B.R.M0+8.W0+16.M0+16.F.B.R.M0+16",
    ),
];

/// The scenarios as workloads, with extra fault and quirk names applied.
pub fn scenario_workloads() -> Vec<(&'static str, Workload)> {
    SCENARIOS
        .iter()
        .map(|(name, _, text)| (*name, text.parse().expect("scenario workloads parse")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_parses_and_round_trips() {
        for (name, w) in scenario_workloads() {
            assert_eq!(w.to_string().parse::<Workload>().unwrap(), w, "{name}");
        }
    }
}
