//! The new layout (the original's `HandleDiskLayout` decisions): STATE moves back over the
//! space freed from ROOT-A and, when the OEM partition grows, OEM moves behind ROOT-A and
//! extends up to STATE.

use anyhow::{bail, Result};

use super::bootdisk::ROOT_A;
use super::gpt_edit::Range;
use super::relocate::Change;
use super::sfdisk::{Partition, Table};

/// ROOT-A's size once reclaimed: 8 sectors keeps 4 KiB alignment.
pub const MIN_PARTITION_SECTORS: u64 = 8;
/// Where STATE (or OEM) goes after a reclaimed ROOT-A, counted from ROOT-A's start: 2 MiB,
/// because `sfdisk --move-data` may need 1 MiB of room, and it keeps 4 KiB alignment.
pub const RECLAIM_MARGIN_SECTORS: u64 = 4096;

/// One change to the disk, in the order [`plan`] lists them; sizes and starts in sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Rewrite the table with a new size (no data moves).
    SetSize {
        /// The partition number.
        part: u32,
        /// Its new size.
        size: u64,
    },
    /// Move a partition and its data.
    Move {
        /// The partition number.
        part: u32,
        /// Its new first sector.
        start: u64,
    },
    /// Give a partition a new size and grow its ext4 file system to fill it.
    Extend {
        /// The partition number.
        part: u32,
        /// Its new size.
        size: u64,
    },
}

/// The last 4 KiB-aligned sector at or before `sector` (512-byte sectors).
fn align_down_4k(sector: u64, sector_size: u64) -> u64 {
    let per_4k = (4096 / sector_size).max(1);
    sector / per_4k * per_4k
}

/// What to do to the table, decided from the table alone (so a repeat run does nothing).
pub fn plan(
    t: &Table,
    state: u32,
    oem_part: u32,
    oem_bytes: u64,
    reclaim: bool,
) -> Result<Vec<Action>> {
    let ss = t.sector_size()?;
    let root_a = t.get(ROOT_A)?;
    if reclaim && root_a.size > MIN_PARTITION_SECTORS {
        // The shrink needs a reboot before anything moves into the freed space.
        return Ok(vec![Action::SetSize {
            part: ROOT_A,
            size: MIN_PARTITION_SECTORS,
        }]);
    }
    let st = t.get(state)?;
    let oem = t.get(oem_part)?;
    let start_point = if reclaim {
        root_a.start + RECLAIM_MARGIN_SECTORS
    } else {
        st.start
    };
    if oem_bytes != 0 && oem.start == start_point {
        println!("The OEM partition already starts at sector {start_point}; nothing to move");
        return Ok(vec![]);
    }
    let oem_sectors = oem_bytes.div_ceil(ss);
    if oem_sectors <= oem.size {
        if oem_bytes != 0 {
            println!(
                "WARNING: the OEM size of {oem_bytes} bytes is not larger than the OEM partition's {} bytes; the OEM partition is left as it is",
                oem.size * ss
            );
        }
        if !reclaim || st.start == start_point {
            return Ok(vec![]);
        }
        return Ok(vec![Action::Move {
            part: state,
            start: start_point,
        }]);
    }
    let new_state_start = align_down_4k(start_point + oem_bytes / ss, ss);
    let new_state_end = new_state_start + st.size - 1;
    let last = t.last_lba()?;
    if new_state_end > last {
        bail!(
            "the disk is too small: STATE would end at sector {new_state_end}, past the last usable sector {last}; use a larger -disk-size-gb"
        );
    }
    Ok(vec![
        Action::Move {
            part: state,
            start: new_state_start,
        },
        Action::Move {
            part: oem_part,
            start: start_point,
        },
        Action::Extend {
            part: oem_part,
            size: new_state_start - start_point,
        },
    ])
}

/// Every change the relocation makes, in the order it makes them: ROOT-A's shrink (when
/// reclaiming), then the moves, with OEM's growth folded into its move. All of them happen
/// in one go at shutdown, so nothing waits for the kernel to see an intermediate table.
pub fn changes(
    t: &Table,
    state: u32,
    oem_part: u32,
    oem_bytes: u64,
    reclaim: bool,
) -> Result<Vec<Change>> {
    let range = |p: Partition| Range {
        first: p.start,
        last: p.end(),
    };
    let sized = |start: u64, size: u64| Range {
        first: start,
        last: start + size - 1,
    };
    let mut t = t.clone();
    let mut out: Vec<Change> = Vec::new();
    let mut actions = plan(&t, state, oem_part, oem_bytes, reclaim)?;
    if let [Action::SetSize { part, size }] = actions[..] {
        let before = t.get(part)?;
        out.push(Change {
            part,
            from: range(before),
            to: sized(before.start, size),
            moves_data: false,
        });
        t = t.with_size(part, size)?;
        actions = plan(&t, state, oem_part, oem_bytes, reclaim)?;
    }
    for a in actions {
        match a {
            Action::Move { part, start } => {
                let p = t.get(part)?;
                out.push(Change {
                    part,
                    from: range(p),
                    to: sized(start, p.size),
                    moves_data: true,
                });
            }
            Action::Extend { part, size } => match out.iter_mut().find(|c| c.part == part) {
                Some(c) => c.to = sized(c.to.first, size),
                None => {
                    let p = t.get(part)?;
                    out.push(Change {
                        part,
                        from: range(p),
                        to: sized(p.start, size),
                        moves_data: false,
                    });
                }
            },
            Action::SetSize { part, .. } => {
                bail!("partition {part} would need a second shrink; the table is inconsistent")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::sfdisk::tests::DUMP;

    fn table(edits: &[(u32, u64, u64)]) -> Table {
        let mut text = DUMP.to_string();
        for (n, start, size) in edits {
            let t = Table::parse(&text).unwrap();
            let old = t.get(*n).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("/dev/vda{n} ")))
                .unwrap()
                .to_string();
            let new = line
                .replace(
                    &format!("start={:>12}", old.start),
                    &format!("start={start:>12}"),
                )
                .replace(
                    &format!("size={:>12}", old.size),
                    &format!("size={size:>12}"),
                );
            text = text.replace(&line, &new);
        }
        Table::parse(&text).unwrap()
    }

    const MIB: u64 = 1 << 20;
    // The fixture: ROOT-A at 2347008 (1 GiB), STATE right after it, OEM 16 MiB at 86016.
    const ROOT_A_START: u64 = 2347008;
    const STATE_START: u64 = 4444160;
    const STATE_SIZE: u64 = 3944415;

    #[test]
    fn plans() {
        let full = table(&[]);
        let shrunk = table(&[(3, ROOT_A_START, 8)]);
        let start_point = ROOT_A_START + 4096;
        let moved = table(&[(3, ROOT_A_START, 8), (1, start_point, STATE_SIZE)]);
        // 99M of OEM after the reclaimed ROOT-A.
        let oem99 = 99 * MIB;
        let new_state = start_point + 99 * 2048;
        let big_disk = |t: Table| {
            Table::parse(&t.text().replace("last-lba: 8388574", "last-lba: 20971486")).unwrap()
        };
        let cases: Vec<(&str, Table, u64, bool, Vec<Action>)> = vec![
            (
                "shrink first",
                full.clone(),
                0,
                true,
                vec![Action::SetSize { part: 3, size: 8 }],
            ),
            (
                "reclaim: STATE moves back",
                shrunk.clone(),
                0,
                true,
                vec![Action::Move {
                    part: 1,
                    start: start_point,
                }],
            ),
            ("reclaim done", moved.clone(), 0, true, vec![]),
            (
                "reclaim, OEM not larger",
                shrunk.clone(),
                16 * MIB,
                true,
                vec![Action::Move {
                    part: 1,
                    start: start_point,
                }],
            ),
            // With STATE moved, an OEM size that leaves OEM in place needs nothing more:
            // the provisioner's "relocated" test is this plan being empty.
            (
                "reclaim done, OEM not larger",
                moved.clone(),
                15 * MIB,
                true,
                vec![],
            ),
            (
                "OEM not larger, no reclaim",
                full.clone(),
                15 * MIB,
                false,
                vec![],
            ),
            ("nothing asked", full.clone(), 0, false, vec![]),
            (
                "reclaim and grow OEM",
                shrunk.clone(),
                oem99,
                true,
                vec![
                    Action::Move {
                        part: 1,
                        start: new_state,
                    },
                    Action::Move {
                        part: 8,
                        start: start_point,
                    },
                    Action::Extend {
                        part: 8,
                        size: new_state - start_point,
                    },
                ],
            ),
            (
                "grow OEM without reclaim: STATE moves up",
                big_disk(full.clone()),
                oem99,
                false,
                vec![
                    Action::Move {
                        part: 1,
                        start: STATE_START + 99 * 2048,
                    },
                    Action::Move {
                        part: 8,
                        start: STATE_START,
                    },
                    Action::Extend {
                        part: 8,
                        size: 99 * 2048,
                    },
                ],
            ),
            (
                "OEM already moved",
                table(&[
                    (3, ROOT_A_START, 8),
                    (8, start_point, 99 * 2048),
                    (1, new_state, STATE_SIZE),
                ]),
                oem99,
                true,
                vec![],
            ),
        ];
        for (name, t, oem, reclaim, want) in cases {
            assert_eq!(plan(&t, 1, 8, oem, reclaim).unwrap(), want, "{name}");
        }
    }

    #[test]
    fn unaligned_oem_size_keeps_state_4k_aligned() {
        let shrunk = table(&[(3, ROOT_A_START, 8)]);
        let a = plan(&shrunk, 1, 8, 99 * MIB + 1000, true).unwrap();
        let Action::Move { start, .. } = a[0] else {
            panic!("{a:?}")
        };
        assert_eq!(start % 8, 0);
        assert_eq!(start, ROOT_A_START + 4096 + 99 * 2048);
    }

    #[test]
    fn too_small_a_disk_is_refused() {
        let e = plan(&table(&[]), 1, 8, 1 << 30, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the disk is too small") && e.contains("-disk-size-gb"),
            "{e}"
        );
    }

    #[test]
    fn one_set_of_changes_for_reclaim_and_oem_growth() {
        let r = |first: u64, size: u64| Range {
            first,
            last: first + size - 1,
        };
        let start_point = ROOT_A_START + 4096;
        let new_state = start_point + 99 * 2048;
        let c = changes(&table(&[]), 1, 8, 99 * MIB, true).unwrap();
        assert_eq!(
            c,
            vec![
                Change {
                    part: 3,
                    from: r(ROOT_A_START, 2097152),
                    to: r(ROOT_A_START, 8),
                    moves_data: false
                },
                Change {
                    part: 1,
                    from: r(STATE_START, STATE_SIZE),
                    to: r(new_state, STATE_SIZE),
                    moves_data: true
                },
                Change {
                    part: 8,
                    from: r(86016, 32768),
                    to: r(start_point, new_state - start_point),
                    moves_data: true
                },
            ]
        );
        let done = table(&[
            (3, ROOT_A_START, 8),
            (8, start_point, 99 * 2048),
            (1, new_state, STATE_SIZE),
        ]);
        assert!(changes(&done, 1, 8, 99 * MIB, true).unwrap().is_empty());
        let reclaim_only = changes(&table(&[]), 1, 8, 0, true).unwrap();
        assert_eq!(reclaim_only.len(), 2);
        assert_eq!(reclaim_only[1].to, r(start_point, STATE_SIZE));
    }
}
