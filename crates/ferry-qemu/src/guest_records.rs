//! The test guest's record format and its verifier (HOST-6).
//!
//! The guest's `/init` (`scripts/guest/init`, workload `records`) writes record `seq` (1, 2, ...)
//! as one 4096-byte block at byte offset `seq * 4096` of its data disk, with `dd conv=fsync`
//! before printing `REC <seq>` on the serial console. Block 0 is never written.
//!
//! ```text
//! bytes 0..127    "FERRYREC <seq: 10 decimal digits> <run: 16 hex> <sha256: 64 hex>"
//!                 padded with spaces; byte 127 is '\n'
//! bytes 128..4096 payload (3968 bytes, any content)
//! sha256 = sha256("<seq: 10 digits> <run>\n" ++ payload)
//! ```
//!
//! The verifier classifies every block: all zero = empty; a record whose checksum holds and whose
//! seq equals its slot = valid; anything else = corrupted. The run id is taken from record 1 (or
//! the first valid record); valid records of other runs are listed separately.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, ErrorKind, Result};
use crate::img;
use crate::spec::DiskFormat;

/// Record size and slot size.
pub const RECORD_SIZE: usize = 4096;
const HEADER_SIZE: usize = 128;
const MAGIC: &str = "FERRYREC";

/// What the verifier found on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordReport {
    /// Largest m such that records 1..=m are all valid.
    pub clean_prefix_len: u64,
    /// Highest valid record of the run (also beyond a gap).
    pub last_record: Option<u64>,
    /// First missing or bad slot below `last_record`, if the records are not contiguous.
    pub first_gap: Option<u64>,
    /// Slots holding neither zeroes nor a valid record (torn or damaged writes).
    pub corrupted: Vec<u64>,
    /// Run id of the records.
    pub run_id: Option<String>,
    /// Slots holding valid records of another run.
    pub other_run: Vec<u64>,
}

/// Build one record exactly as the guest does (for tests and tools).
pub fn encode_record(seq: u64, run_id: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![b' '; RECORD_SIZE - HEADER_SIZE];
    let n = payload.len().min(body.len());
    body[..n].copy_from_slice(&payload[..n]);
    let sum = checksum(seq, run_id, &body);
    let header = format!("{MAGIC} {seq:010} {run_id} {sum}");
    let mut rec = format!("{header:<127}\n").into_bytes();
    rec.truncate(HEADER_SIZE);
    rec.extend_from_slice(&body);
    rec
}

fn checksum(seq: u64, run_id: &str, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(format!("{seq:010} {run_id}\n").as_bytes());
    h.update(payload);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

enum Slot {
    Empty,
    Valid { run: String },
    Bad,
}

fn classify(slot: u64, block: &[u8]) -> Slot {
    if block.iter().all(|b| *b == 0) {
        return Slot::Empty;
    }
    let Ok(header) = std::str::from_utf8(&block[..HEADER_SIZE]) else {
        return Slot::Bad;
    };
    if !header.ends_with('\n') {
        return Slot::Bad;
    }
    let f: Vec<&str> = header.split_whitespace().collect();
    let [magic, seq, run, sum] = f.as_slice() else {
        return Slot::Bad;
    };
    if *magic != MAGIC || seq.len() != 10 || seq.parse::<u64>().ok() != Some(slot) {
        return Slot::Bad;
    }
    if checksum(slot, run, &block[HEADER_SIZE..]) != *sum {
        return Slot::Bad;
    }
    Slot::Valid { run: run.to_string() }
}

/// Verify records in a raw disk image read from `reader` (slot 0 is skipped).
pub fn verify_reader(mut reader: impl Read) -> Result<RecordReport> {
    let mut slots: Vec<Slot> = Vec::new();
    let mut block = vec![0u8; RECORD_SIZE];
    loop {
        let mut filled = 0;
        while filled < RECORD_SIZE {
            let n = reader.read(&mut block[filled..]).map_err(|e| Error::io("Cannot read disk image", e))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled < RECORD_SIZE {
            break;
        }
        let slot = slots.len() as u64;
        slots.push(if slot == 0 { Slot::Empty } else { classify(slot, &block) });
    }
    Ok(report(&slots))
}

fn report(slots: &[Slot]) -> RecordReport {
    let run_id = slots
        .get(1)
        .and_then(|s| match s {
            Slot::Valid { run } => Some(run.clone()),
            _ => None,
        })
        .or_else(|| {
            slots.iter().find_map(|s| match s {
                Slot::Valid { run } => Some(run.clone()),
                _ => None,
            })
        });
    let mut r = RecordReport { run_id, ..RecordReport::default() };
    let ours = |s: &Slot| matches!(s, Slot::Valid { run } if Some(run) == r.run_id.as_ref());
    for (i, s) in slots.iter().enumerate().skip(1) {
        let seq = i as u64;
        match s {
            Slot::Bad => r.corrupted.push(seq),
            Slot::Valid { .. } if !ours(s) => r.other_run.push(seq),
            Slot::Valid { .. } => r.last_record = Some(seq),
            Slot::Empty => {}
        }
    }
    r.clean_prefix_len = slots.iter().skip(1).take_while(|s| ours(s)).count() as u64;
    if let Some(last) = r.last_record {
        if last > r.clean_prefix_len {
            r.first_gap = Some(r.clean_prefix_len + 1);
        }
    }
    r
}

/// Verify a disk image file (raw or qcow2, detected with `qemu-img info -U`). A qcow2 image is
/// converted to a temporary raw file first (`qemu-img convert -U`), so the whole chain is read.
pub async fn verify_image(path: &Path) -> Result<RecordReport> {
    let info = img::info(path, true).await?;
    let read = |p: &Path| -> Result<RecordReport> {
        let f = std::fs::File::open(p).map_err(|e| Error::io(format!("Cannot open {}", p.display()), e))?;
        verify_reader(std::io::BufReader::with_capacity(1 << 20, f))
    };
    match info.format.as_str() {
        "raw" => read(path),
        "qcow2" => {
            let dir = tempfile::tempdir().map_err(|e| Error::io("Cannot create temp dir", e))?;
            let raw = dir.path().join("disk.raw");
            img::convert(path, &raw, DiskFormat::Raw, true).await?;
            read(&raw)
        }
        other => Err(Error::new(ErrorKind::InvalidSpec, format!("Cannot verify records in a {other} image"))),
    }
}

/// The highest `REC <n>` line on a serial console log.
pub fn last_serial_record(serial: &str) -> Option<u64> {
    serial.lines().filter_map(|l| l.trim().strip_prefix("REC ")).filter_map(|n| n.trim().parse().ok()).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(records: &[(u64, Option<Vec<u8>>)], slots: u64) -> Vec<u8> {
        let mut d = vec![0u8; (slots as usize) * RECORD_SIZE];
        for (seq, rec) in records {
            let o = *seq as usize * RECORD_SIZE;
            let rec = rec.clone().unwrap_or_else(|| encode_record(*seq, "00112233aabbccdd", b"payload"));
            d[o..o + RECORD_SIZE].copy_from_slice(&rec);
        }
        d
    }

    #[test]
    fn host_6_verifier_reports_clean_prefix() {
        let d = disk(&[(1, None), (2, None), (3, None)], 16);
        let r = verify_reader(&d[..]).expect("verify");
        assert_eq!(r.clean_prefix_len, 3);
        assert_eq!(r.last_record, Some(3));
        assert_eq!(r.first_gap, None);
        assert!(r.corrupted.is_empty());
        assert_eq!(r.run_id.as_deref(), Some("00112233aabbccdd"));
    }

    #[test]
    fn host_6_verifier_reports_gap_corruption_and_other_runs() {
        let mut torn = encode_record(3, "00112233aabbccdd", b"payload");
        torn[3000] ^= 0xff;
        let moved = encode_record(4, "00112233aabbccdd", b"x");
        let other = encode_record(7, "ffffffffffffffff", b"x");
        let d = disk(&[(1, None), (2, None), (3, Some(torn)), (5, Some(moved)), (6, None), (7, Some(other))], 16);
        let r = verify_reader(&d[..]).expect("verify");
        assert_eq!(r.clean_prefix_len, 2);
        assert_eq!(r.first_gap, Some(3));
        assert_eq!(r.last_record, Some(6));
        assert_eq!(r.corrupted, vec![3, 5]);
        assert_eq!(r.other_run, vec![7]);
    }

    #[test]
    fn host_6_serial_last_record() {
        assert_eq!(last_serial_record("x\nREC 1\nREC 12\nREC_ERR 13\n"), Some(12));
        assert_eq!(last_serial_record("FERRY READY 1.2\n"), None);
    }
}
