//! The new layout (the original's `HandleDiskLayout` decisions): STATE moves back over the
//! space freed from ROOT-A and, when the OEM partition grows, OEM moves behind ROOT-A and
//! extends up to STATE.

use anyhow::{bail, Result};

use super::bootdisk::ROOT_A;
use super::gpt_edit::{Gpt, Range};
use super::relocate::Change;

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
    t: &Gpt,
    state: u32,
    oem_part: u32,
    oem_bytes: u64,
    reclaim: bool,
) -> Result<Vec<Action>> {
    let ss = t.sector_size();
    let root_a = t.range(ROOT_A)?;
    if reclaim && root_a.sectors() > MIN_PARTITION_SECTORS {
        // The shrink needs a reboot before anything moves into the freed space.
        return Ok(vec![Action::SetSize {
            part: ROOT_A,
            size: MIN_PARTITION_SECTORS,
        }]);
    }
    let st = t.range(state)?;
    let oem = t.range(oem_part)?;
    let start_point = if reclaim {
        root_a.first + RECLAIM_MARGIN_SECTORS
    } else {
        st.first
    };
    if oem_bytes != 0 && oem.first == start_point {
        println!("The OEM partition already starts at sector {start_point}; nothing to move");
        return Ok(vec![]);
    }
    let oem_sectors = oem_bytes.div_ceil(ss);
    if oem_sectors <= oem.sectors() {
        if oem_bytes != 0 {
            println!(
                "WARNING: the OEM size of {oem_bytes} bytes is not larger than the OEM partition's {} bytes; the OEM partition is left as it is",
                oem.sectors() * ss
            );
        }
        if !reclaim || st.first == start_point {
            return Ok(vec![]);
        }
        return Ok(vec![Action::Move {
            part: state,
            start: start_point,
        }]);
    }
    let new_state_start = align_down_4k(start_point + oem_bytes / ss, ss);
    let new_state_end = new_state_start + st.sectors() - 1;
    let last = t.last_usable();
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
    t: &Gpt,
    state: u32,
    oem_part: u32,
    oem_bytes: u64,
    reclaim: bool,
) -> Result<Vec<Change>> {
    let sized = |start: u64, size: u64| Range {
        first: start,
        last: start + size - 1,
    };
    let mut t = t.clone();
    let mut out: Vec<Change> = Vec::new();
    let mut actions = plan(&t, state, oem_part, oem_bytes, reclaim)?;
    if let [Action::SetSize { part, size }] = actions[..] {
        let before = t.range(part)?;
        let after = sized(before.first, size);
        out.push(Change {
            part,
            from: before,
            to: after,
            moves_data: false,
        });
        t.set_range(part, after)?;
        actions = plan(&t, state, oem_part, oem_bytes, reclaim)?;
    }
    for a in actions {
        match a {
            Action::Move { part, start } => {
                let p = t.range(part)?;
                out.push(Change {
                    part,
                    from: p,
                    to: sized(start, p.sectors()),
                    moves_data: true,
                });
            }
            Action::Extend { part, size } => match out.iter_mut().find(|c| c.part == part) {
                Some(c) => c.to = sized(c.to.first, size),
                None => {
                    let p = t.range(part)?;
                    out.push(Change {
                        part,
                        from: p,
                        to: sized(p.first, size),
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
    use std::path::Path;
    use std::process::Command;

    use cos_customizer_common::cmd;

    /// A COS disk's table, as `sfdisk --dump` printed it from a 4 GiB fixture; written to an
    /// image of any size, its last usable sector follows the image's.
    const DUMP: &str = "label: gpt
label-id: 12864CDD-8CD0-4D18-ADB3-9A85A126CC11
unit: sectors
first-lba: 34
sector-size: 512

/dev/vda1 : start=     4444160, size=     3944415, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=1EC2BD9A-2860-45D3-8C31-7FEAF338600D, name=\"STATE\"
/dev/vda2 : start=       20480, size=       32768, type=FE3A2A5D-4F32-41A7-B725-ACCC3285A309, uuid=EA1ECCB8-1645-43A5-B5CA-EE4736CA6F81, name=\"KERN-A\", attrs=\"GUID:48,56\"
/dev/vda3 : start=     2347008, size=     2097152, type=3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC, uuid=8ED1946A-34D6-4D29-B5DE-F021865107E7, name=\"ROOT-A\"
/dev/vda4 : start=       53248, size=       32768, type=FE3A2A5D-4F32-41A7-B725-ACCC3285A309, uuid=A68ADB5A-6F5A-4D38-BF23-346C9F841640, name=\"KERN-B\"
/dev/vda5 : start=      249856, size=     2097152, type=3CB8E202-3B7E-47DD-8A3C-7FF2A13CFCEC, uuid=3E0D0DE1-12DF-4CC0-A04F-A4505E1F7623, name=\"ROOT-B\"
/dev/vda8 : start=       86016, size=       32768, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=40C5544F-5C78-4F56-8C0F-D105859FA36D, name=\"OEM\"
/dev/vda11 : start=          64, size=       16384, type=21686148-6449-6E6F-744E-656564454649, uuid=EF1F5A30-435C-4C86-BA34-119BC336B1F9, name=\"RWFW\"
/dev/vda12 : start=      118784, size=      131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=B63DB121-878C-4BED-92BE-966619EF8967, name=\"EFI-SYSTEM\"
";

    const GIB: u64 = 1 << 30;

    /// The fixture's table on a sparse image of `disk_bytes`, with `(number, start, size)`
    /// edits made to it in memory.
    fn table_on(disk_bytes: u64, edits: &[(u32, u64, u64)]) -> Gpt {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("disk.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(disk_bytes)
            .unwrap();
        cmd::run_with_input(
            Command::new("sfdisk").args(["-q", "--no-reread"]).arg(&img),
            DUMP,
        )
        .unwrap();
        let mut t = crate::disk::table::read(Path::new(&img)).unwrap();
        for &(n, first, size) in edits {
            t.set_range(
                n,
                Range {
                    first,
                    last: first + size - 1,
                },
            )
            .unwrap();
        }
        t
    }

    fn table(edits: &[(u32, u64, u64)]) -> Gpt {
        table_on(4 * GIB, edits)
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
        let cases: Vec<(&str, Gpt, u64, bool, Vec<Action>)> = vec![
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
                table_on(10 * GIB, &[]),
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
