//! The latency models of the flush-heavy section as a markdown table. The models and the device
//! that charges them are `engine::device::latency`.

use engine::device::LatencyModel;

fn us(ns: u64) -> String {
    if ns >= 1_000_000 && ns % 1_000_000 == 0 {
        format!("{} ms", ns / 1_000_000)
    } else {
        format!("{} µs", ns as f64 / 1000.0)
    }
}

fn rate(bps: u64) -> String {
    if bps >= 1_000_000_000 {
        format!("{} GB/s", bps as f64 / 1e9)
    } else {
        format!("{} MB/s", bps as f64 / 1e6)
    }
}

pub const MARKDOWN_HEADER: &str = "| device | per read/write op | write | read | flush | FUA write |\n| --- | --- | --- | --- | --- | --- |";

/// One markdown table row describing `m`.
pub fn markdown_row(m: &LatencyModel) -> String {
    let per_op = match (m.op_ns, m.seek_ns) {
        (op, 0) => us(op),
        (0, seek) => format!("{} unless sequential", us(seek)),
        (op, seek) => format!("{} + {} unless sequential", us(op), us(seek)),
    };
    format!(
        "| {} | {} | {} | {} | {} ({} if nothing is pending) | write + {} |",
        m.name,
        per_op,
        rate(m.write_bps),
        rate(m.read_bps),
        us(m.flush_ns),
        us(m.idle_flush_ns),
        us(m.fua_ns),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::device::latency::{HDD, SSD};

    #[test]
    fn rows_describe_the_models() {
        assert_eq!(
            markdown_row(&SSD),
            "| SSD (cache, plog) | 20 µs | 1 GB/s | 2 GB/s | 200 µs (5 µs if nothing is pending) \
             | write + 200 µs |"
        );
        assert_eq!(
            markdown_row(&HDD),
            "| HDD (backing) | 5 ms unless sequential | 150 MB/s | 150 MB/s | 10 ms (5 µs if \
             nothing is pending) | write + 10 ms |"
        );
    }
}
