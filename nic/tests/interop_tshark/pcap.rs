//! Writing frames to a pcap file for tshark to read.

use std::path::Path;
use std::time::Duration;

use pcap_file::pcap::{PcapPacket, PcapWriter};

/// Writes `frames` to a new pcap file at `path`, one millisecond apart.
pub(crate) fn write_pcap<'a>(path: &Path, frames: impl IntoIterator<Item = &'a [u8]>) {
    let mut w = PcapWriter::new(std::fs::File::create(path).unwrap()).unwrap();
    for (i, bytes) in frames.into_iter().enumerate() {
        let ts = Duration::from_millis(1_700_000_000_000 + i as u64);
        w.write_packet(&PcapPacket::new(ts, bytes.len() as u32, bytes))
            .unwrap();
    }
    drop(w);
}
