//! The order in which a move copies its bytes. Each chunk is no longer than the distance
//! the partition moves, and chunks run in the direction of the move (up the disk when it
//! moves down, down the disk when it moves up): so no chunk's write lands on a source not
//! yet copied, and after a crash, copying again from the first unfinished chunk is exact.
//!
//! [`plan`] then puts first the pieces whose writes land on no source: copying those leaves
//! every old file system whole, so they run before the partition table changes.

use super::journal::{Change, MoveData, HEAD_BYTES};

/// The largest chunk: big enough for sequential speed, small enough to checkpoint often.
const MAX_CHUNK: u64 = 4 << 20;

/// One copy, in absolute disk bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Where to read.
    pub src: u64,
    /// Where to write.
    pub dst: u64,
    /// How many bytes.
    pub len: u64,
}

/// The chunks of a move, in copy order. `sector_size` converts the change's sectors.
pub fn chunks(change: &Change, data: &MoveData, sector_size: u64) -> Vec<Chunk> {
    let from = change.from.first * sector_size;
    let to = change.to.first * sector_size;
    let down = to < from;
    let distance = from.abs_diff(to);
    // Sector-aligned, and never larger than the distance (which is a whole number of
    // sectors, at least one).
    let max = (MAX_CHUNK.min(distance) / sector_size * sector_size).max(sector_size);
    let mut out = Vec::new();
    let mut push = |off: u64, len: u64| {
        out.push(Chunk {
            src: from + off,
            dst: to + off,
            len,
        })
    };
    if down {
        for &(off, len) in &data.extents {
            let mut done = 0;
            while done < len {
                let n = max.min(len - done);
                push(off + done, n);
                done += n;
            }
        }
    } else {
        for &(off, len) in data.extents.iter().rev() {
            let mut left = len;
            while left > 0 {
                let n = max.min(left);
                left -= n;
                push(off + left, n);
            }
        }
    }
    out
}

/// All moves' chunks in the order a relocation copies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Pieces whose writes land on no source byte (no used block and no head of a moving
    /// partition): copied while the old table is in place.
    pub staging: Vec<Chunk>,
    /// The other pieces, in the moves' copy order: copied after the new table is written.
    pub overwriting: Vec<Chunk>,
    /// Whether some head's destination holds source bytes.
    pub heads_overwrite: bool,
}

/// Splits `moves` (in the order they run) into staging and overwriting pieces. The
/// overwriting pieces keep the chunks' order, and every staging piece writes only bytes
/// no chunk reads, so the order of [`chunks`] stays safe.
pub fn plan(moves: &[(&Change, &MoveData)], sector_size: u64) -> Plan {
    let mut sources: Vec<(u64, u64)> = moves
        .iter()
        .flat_map(|(c, d)| {
            let base = c.from.first * sector_size;
            std::iter::once((base, base + HEAD_BYTES)).chain(
                d.extents
                    .iter()
                    .map(move |&(o, l)| (base + o, base + o + l)),
            )
        })
        .collect();
    sources.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(sources.len());
    for (lo, hi) in sources {
        match merged.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    let mut plan = Plan {
        staging: Vec::new(),
        overwriting: Vec::new(),
        heads_overwrite: moves.iter().any(|(c, _)| {
            let at = c.to.first * sector_size;
            overlaps(&merged, at, at + HEAD_BYTES)
        }),
    };
    for (c, d) in moves {
        for k in chunks(c, d, sector_size) {
            split(k, &merged, &mut plan);
        }
    }
    plan
}

fn overlaps(ranges: &[(u64, u64)], lo: u64, hi: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= lo);
    ranges.get(i).is_some_and(|r| r.0 < hi)
}

/// Cuts a chunk where its destination enters or leaves a source range.
fn split(k: Chunk, sources: &[(u64, u64)], plan: &mut Plan) {
    let end = k.dst + k.len;
    let mut at = k.dst;
    while at < end {
        let i = sources.partition_point(|r| r.1 <= at);
        let (next, hit) = match sources.get(i) {
            Some(r) if r.0 <= at => (r.1.min(end), true),
            Some(r) => (r.0.min(end), false),
            None => (end, false),
        };
        let piece = Chunk {
            src: k.src + (at - k.dst),
            dst: at,
            len: next - at,
        };
        if hit {
            plan.overwriting.push(piece);
        } else {
            plan.staging.push(piece);
        }
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::gpt_edit::Range;

    fn change(from: u64, to: u64) -> Change {
        Change {
            part: 1,
            from: Range {
                first: from,
                last: from + 99_999,
            },
            to: Range {
                first: to,
                last: to + 99_999,
            },
            moves_data: true,
        }
    }

    fn data() -> MoveData {
        MoveData {
            extents: vec![(4096, 10 << 20), (32 << 20, 4096)],
            head: vec![0; 4096],
        }
    }

    /// Simulates the copy on a byte map and checks every chunk reads bytes no earlier
    /// chunk overwrote.
    fn assert_safe(c: &Change, d: &MoveData) {
        let chunks = chunks(c, d, 512);
        let total: u64 = chunks.iter().map(|k| k.len).sum();
        assert_eq!(total, d.extents.iter().map(|e| e.1).sum::<u64>());
        for (i, k) in chunks.iter().enumerate() {
            for earlier in &chunks[..i] {
                let overlap = earlier.dst < k.src + k.len && k.src < earlier.dst + earlier.len;
                assert!(!overlap, "chunk {k:?} reads what {earlier:?} wrote");
            }
            assert!(k.len <= c.from.first.abs_diff(c.to.first) * 512);
        }
    }

    #[test]
    fn moves_down_copy_upwards_and_moves_up_copy_downwards() {
        let down = change(100_000, 96_000);
        let ks = chunks(&down, &data(), 512);
        assert!(ks.windows(2).all(|w| w[0].src < w[1].src));
        assert!(ks.iter().all(|k| k.len <= 4000 * 512));
        assert_safe(&down, &data());
        let up = change(100_000, 100_008);
        let ks = chunks(&up, &data(), 512);
        assert!(ks.windows(2).all(|w| w[0].src > w[1].src));
        assert!(ks.iter().all(|k| k.len == 4096));
        assert_safe(&up, &data());
        assert_safe(&change(100_000, 2_000_000), &data());
        assert_eq!(chunks(&change(20_000, 1000), &data(), 512)[0].len, 4 << 20);
    }

    /// Copies like a relocation would, on a byte map: after the staging pieces every source
    /// byte is still there, and after all pieces every destination holds its source.
    fn simulate(moves: &[(Change, MoveData)]) -> Plan {
        let refs: Vec<(&Change, &MoveData)> = moves.iter().map(|(c, d)| (c, d)).collect();
        let p = plan(&refs, 512);
        let size = moves
            .iter()
            .map(|(c, _)| (c.from.last.max(c.to.last) + 1) * 512)
            .max()
            .unwrap() as usize;
        let old: Vec<u8> = (0..size).map(|i| (i / 512 * 7 + i) as u8).collect();
        let mut disk = old.clone();
        let copy = |disk: &mut Vec<u8>, k: &Chunk| {
            let buf = disk[k.src as usize..(k.src + k.len) as usize].to_vec();
            disk[k.dst as usize..(k.dst + k.len) as usize].copy_from_slice(&buf);
        };
        let each_source = |f: &mut dyn FnMut(usize, usize)| {
            for (c, d) in moves {
                for &(o, l) in &d.extents {
                    for b in o..o + l {
                        f(
                            (c.from.first * 512 + b) as usize,
                            (c.to.first * 512 + b) as usize,
                        );
                    }
                }
            }
        };
        for k in &p.staging {
            copy(&mut disk, k);
        }
        each_source(&mut |src, _| assert_eq!(disk[src], old[src], "staging wrote a source"));
        for k in &p.overwriting {
            copy(&mut disk, k);
        }
        each_source(&mut |src, dst| assert_eq!(disk[dst], old[src], "byte {src} -> {dst}"));
        let total: u64 = p.staging.iter().chain(&p.overwriting).map(|k| k.len).sum();
        let want: u64 = moves
            .iter()
            .flat_map(|(_, d)| &d.extents)
            .map(|e| e.1)
            .sum();
        assert_eq!(total, want);
        p
    }

    #[test]
    fn staging_pieces_overwrite_no_source() {
        // Far enough down that nothing lands on a used block: all of it is staged.
        let far = simulate(&[(change(100_000, 10_000), data())]);
        assert!(
            far.overwriting.is_empty() && !far.heads_overwrite,
            "{far:?}"
        );
        // A short move up lands on its own extents: those pieces wait for the new table,
        // the rest (landing on free blocks) is staged.
        let mut d = data();
        d.extents = vec![(4096, 8192), (1 << 20, 1 << 20), (3 << 20, 4096)];
        let near = simulate(&[(change(100_000, 100_016), d.clone())]);
        assert!(!near.staging.is_empty() && !near.overwriting.is_empty());
        assert!(
            near.heads_overwrite,
            "the new head lands on the old first extent"
        );
        // Two moves: OEM to STATE's old start, STATE up over itself.
        let mut oem = change(1_000, 100_000);
        oem.part = 8;
        oem.from.last = 5_000;
        oem.to.last = 104_000;
        let state = change(100_000, 104_008);
        simulate(&[(state, d), (oem, data_small())]);
    }

    fn data_small() -> MoveData {
        MoveData {
            extents: vec![(4096, 8192), (1 << 20, 4096)],
            head: vec![0; 4096],
        }
    }
}
