//! Edits of the kernel command lines in COS's `/efi/boot/grub.cfg` (pure text functions).

use anyhow::{bail, Result};

/// The kernel's command-line limit on x86 (COS_CMDLINE_SIZE 2048, with the final NUL).
const CMDLINE_MAX: usize = 2047;

/// Adds `systemd.mask=<unit>` after every `cros_efi` word; `None` if grub.cfg already has it.
pub fn mask_unit(cfg: &str, unit: &str) -> Option<String> {
    let mask = format!("systemd.mask={unit}");
    if cfg
        .split(|c: char| c.is_whitespace() || c == '"')
        .any(|w| w == mask)
    {
        return None;
    }
    let mut out = String::with_capacity(cfg.len() + 256);
    let mut rest = cfg;
    while let Some(i) = rest.find("cros_efi") {
        let end = i + "cros_efi".len();
        out.push_str(&rest[..end]);
        let is_word = rest[end..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '='));
        if is_word {
            out.push(' ');
            out.push_str(&mask);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    Some(out)
}

/// A sealed OEM partition: the dm-verity device made over it at boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OemVerity {
    /// The OEM partition's GPT partition UUID, which names it on the command line.
    pub partuuid: String,
    /// The hash tree's root hash, in hex.
    pub root_hash: String,
    /// The salt of the hash tree, in hex.
    pub salt: String,
    /// File system size in 4 KiB blocks; the hash tree starts right after it.
    pub data_blocks: u64,
}

const OEM_DEVICE: &str = "oemroot";

impl OemVerity {
    fn sectors(&self) -> u64 {
        self.data_blocks * 8
    }

    /// One device of the upstream kernel's `dm-mod.create=` (`name,uuid,minor,flags,table`).
    fn dm_mod_create(&self) -> String {
        let (u, n) = (&self.partuuid, self.data_blocks);
        format!(
            "{OEM_DEVICE},,,ro,0 {} verity 0 PARTUUID={u} PARTUUID={u} 4096 4096 {n} {n} sha256 {} {}",
            self.sectors(),
            self.root_hash,
            self.salt
        )
    }

    /// One device of ChromeOS's `dm=` (`name uuid ro|rw targets,table`).
    fn chromeos_dm(&self) -> String {
        let (u, s) = (&self.partuuid, self.sectors());
        format!(
            "{OEM_DEVICE} none ro 1,0 {s} verity payload=PARTUUID={u} hashtree=PARTUUID={u} hashstart={s} alg=sha256 root_hexdigest={} salt={}",
            self.root_hash, self.salt
        )
    }
}

/// Where the value of `key` sits on a line: `(start, end)` byte offsets inside the quotes.
/// Handles `key="v"`, `"key=v"` (GRUB's own rewrite) and `key=\"v\"`.
fn quoted_value(line: &str, key: &str) -> Result<Option<(usize, usize)>> {
    for (i, _) in line.match_indices(key) {
        let before = line[..i].chars().next_back();
        if !before.is_none_or(|c| c.is_whitespace() || c == '"') {
            continue;
        }
        let after = i + key.len();
        let rest = &line[after..];
        let (start, close) = if before == Some('"') {
            (after, "\"")
        } else if rest.starts_with("\\\"") {
            (after + 2, "\\\"")
        } else if rest.starts_with('"') {
            (after + 1, "\"")
        } else {
            bail!("{key} is not quoted on {line:?}; cannot add a device to it");
        };
        let Some(len) = line[start..].find(close) else {
            bail!("{key} has no closing quote on {line:?}");
        };
        return Ok(Some((start, start + len)));
    }
    Ok(None)
}

/// Adds (or replaces) the `oemroot` verity device on every verified kernel command line, in
/// whichever syntax the line uses: upstream `dm-mod.create=` or ChromeOS `dm=`.
pub fn add_oem_verity(cfg: &str, v: &OemVerity) -> Result<String> {
    let mut changed = 0;
    let mut out = String::with_capacity(cfg.len() + 1024);
    for line in cfg.split_inclusive('\n') {
        // Only kernel command lines: comments and other commands may mention the keys.
        if !line.trim_start().starts_with("linux") {
            out.push_str(line);
            continue;
        }
        if let Some((s, e)) = quoted_value(line, "dm-mod.create=")? {
            let kept: Vec<&str> = line[s..e]
                .split(';')
                .filter(|d| !d.starts_with(&format!("{OEM_DEVICE},")))
                .collect();
            out.push_str(&line[..s]);
            out.push_str(&kept.join(";"));
            out.push(';');
            out.push_str(&v.dm_mod_create());
            out.push_str(&line[e..]);
            changed += 1;
        } else if let Some((s, e)) = quoted_value(line, "dm=")? {
            let value = &line[s..e];
            let (value, added) = match value.find(&format!(",{OEM_DEVICE} ")) {
                Some(i) => (&value[..i], 0),
                None => (value, 1),
            };
            let (count, devices) = value
                .split_once(' ')
                .and_then(|(c, d)| Some((c.parse::<u32>().ok()?, d)))
                .ok_or_else(|| {
                    anyhow::anyhow!("dm= does not start with a device count on {line:?}")
                })?;
            out.push_str(&line[..s]);
            out.push_str(&format!("{} {devices},{}", count + added, v.chromeos_dm()));
            out.push_str(&line[e..]);
            changed += 1;
        } else {
            out.push_str(line);
        }
    }
    if changed == 0 {
        bail!("grub.cfg has no kernel command line with dm-mod.create= or dm=; is this a COS grub.cfg?");
    }
    Ok(out)
}

/// Fails if a `linux` line's kernel arguments exceed what the kernel accepts.
pub fn check_cmdline_lengths(cfg: &str) -> Result<()> {
    for line in cfg.lines() {
        let Some(rest) = line.trim_start().strip_prefix("linux") else {
            continue;
        };
        let args = rest
            .trim_start()
            .split_once(' ')
            .map_or("", |(_, a)| a.trim());
        if args.len() > CMDLINE_MAX {
            bail!(
                "a kernel command line in grub.cfg would be {} characters, more than the kernel's {CMDLINE_MAX}: {line:?}",
                args.len()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: &str = "update-engine.service";

    const GRUB: &str = r#"set default=2
menuentry "local image A" {
  linux /syslinux/vmlinuz.A init=/usr/lib/systemd/systemd boot=local rootwait ro cros_efi root=PARTUUID=X
}
menuentry "verified image A" {
  linux /syslinux/vmlinuz.A init=/usr/lib/systemd/systemd boot=local ro cros_efi root=/dev/dm-0 dm="1 vroot none ro 1,0 2539520 verity"
}
menuentry "verified image B" {
  linux /syslinux/vmlinuz.B console=ttyS0 cros_efi
}
"#;

    #[test]
    fn masks_after_every_cros_efi() {
        let new = mask_unit(GRUB, MASK).unwrap();
        assert_eq!(
            new.matches("cros_efi systemd.mask=update-engine.service")
                .count(),
            3
        );
        assert!(new.contains("ro cros_efi systemd.mask=update-engine.service root=/dev/dm-0 dm="));
        assert!(new.ends_with("console=ttyS0 cros_efi systemd.mask=update-engine.service\n}\n"));
        assert_eq!(new.replace(" systemd.mask=update-engine.service", ""), GRUB);
    }

    #[test]
    fn masking_is_idempotent_and_per_unit() {
        let once = mask_unit(GRUB, MASK).unwrap();
        assert_eq!(mask_unit(&once, MASK), None);
        let twice = mask_unit(&once, "usr-share-oem.mount").unwrap();
        assert!(twice.contains(
            "cros_efi systemd.mask=usr-share-oem.mount systemd.mask=update-engine.service root="
        ));
        // A unit whose name extends another's is still masked.
        assert!(mask_unit(&once, "update-engine.service.d").is_some());
    }

    #[test]
    fn lines_without_cros_efi_and_lookalikes_are_kept() {
        let cfg = "set timeout=0\nlinux /k cros_efi_x=1 cros_legacy\n";
        assert_eq!(mask_unit(cfg, MASK).unwrap(), cfg);
    }

    fn oem() -> OemVerity {
        OemVerity {
            partuuid: "40c5544f-5c78".into(),
            root_hash: "abc".into(),
            salt: "def".into(),
            data_blocks: 12800,
        }
    }

    const OEM_DM_MOD: &str = "oemroot,,,ro,0 102400 verity 0 PARTUUID=40c5544f-5c78 PARTUUID=40c5544f-5c78 4096 4096 12800 12800 sha256 abc def";
    const OEM_DM: &str = "oemroot none ro 1,0 102400 verity payload=PARTUUID=40c5544f-5c78 hashtree=PARTUUID=40c5544f-5c78 hashstart=102400 alg=sha256 root_hexdigest=abc salt=def";

    #[test]
    fn oem_verity_table() {
        let vroot = "vroot,,,ro,0 2064384 verity 0 PARTUUID=A PARTUUID=A 4096 4096 258048 258048 sha256 h s";
        let dm = "1 vroot none ro 1,0 2539520 verity payload=PARTUUID=A hashtree=PARTUUID=A hashstart=2539520 alg=sha256 root_hexdigest=h salt=s";
        let cases: Vec<(String, String)> = vec![
            // The fixture's and newer COS's form: the quoted value is the last argument.
            (
                format!("  linux /k cros_efi root=/dev/dm-0 dm-mod.create=\"{vroot}\"\n"),
                format!(
                    "  linux /k cros_efi root=/dev/dm-0 dm-mod.create=\"{vroot};{OEM_DM_MOD}\"\n"
                ),
            ),
            // Not last on the line: the old "drop the last character" edit got this wrong.
            (
                format!("linux /k dm-mod.create=\"{vroot}\" console=ttyS0\n"),
                format!("linux /k dm-mod.create=\"{vroot};{OEM_DM_MOD}\" console=ttyS0\n"),
            ),
            // GRUB's rewrite: the whole argument quoted.
            (
                format!("linux /k \"dm-mod.create={vroot}\"\n"),
                format!("linux /k \"dm-mod.create={vroot};{OEM_DM_MOD}\"\n"),
            ),
            // Escaped quotes, as some configs have.
            (
                format!("linux /k dm-mod.create=\\\"{vroot}\\\"\n"),
                format!("linux /k dm-mod.create=\\\"{vroot};{OEM_DM_MOD}\\\"\n"),
            ),
            // ChromeOS dm=: one more device, joined by a comma.
            (
                format!("  linux /k cros_efi root=/dev/dm-0 dm=\"{dm}\"\n"),
                format!(
                    "  linux /k cros_efi root=/dev/dm-0 dm=\"2 {},{OEM_DM}\"\n",
                    &dm[2..]
                ),
            ),
            // No trailing newline, and other lines untouched.
            (
                format!("set a=1\nlinux /k dm=\"{dm}\""),
                format!("set a=1\nlinux /k dm=\"2 {},{OEM_DM}\"", &dm[2..]),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(add_oem_verity(&input, &oem()).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn only_kernel_lines_are_edited() {
        let cfg = "# uses the dm-mod.create= of the entry below\n  linux /k dm-mod.create=\"v\"\n";
        let out = add_oem_verity(cfg, &oem()).unwrap();
        assert!(out.starts_with("# uses the dm-mod.create= of the entry below\n  linux /k dm-mod.create=\"v;oemroot,"), "{out}");
    }

    #[test]
    fn oem_verity_is_replaced_not_repeated() {
        let line = "linux /k dm-mod.create=\"vroot,,,ro,0 8 verity x\"\nlinux /k dm=\"1 vroot none ro 1,0 8 verity x\"\n";
        let once = add_oem_verity(line, &oem()).unwrap();
        let other = OemVerity {
            root_hash: "999".into(),
            ..oem()
        };
        let twice = add_oem_verity(&once, &other).unwrap();
        assert_eq!(twice, add_oem_verity(line, &other).unwrap());
        assert_eq!(twice.matches("oemroot").count(), 2);
        assert!(twice.contains("dm=\"2 vroot"));
    }

    #[test]
    fn oem_verity_errors() {
        assert!(add_oem_verity("linux /k root=/dev/sda3\n", &oem())
            .unwrap_err()
            .to_string()
            .contains("no kernel command line"));
        assert!(add_oem_verity("linux /k dm-mod.create=vroot\n", &oem()).is_err());
        assert!(add_oem_verity("linux /k dm-mod.create=\"vroot\n", &oem()).is_err());
        assert!(add_oem_verity("linux /k dm=\"x vroot\"\n", &oem()).is_err());
        // A lookalike key is not a match.
        assert!(add_oem_verity("linux /k xdm=\"1 a\"\n", &oem()).is_err());
    }

    #[test]
    fn command_line_limit() {
        let ok = format!("  linux /k {}\n", "a".repeat(2047));
        check_cmdline_lengths(&ok).unwrap();
        let long = format!("  linux /k {}\n", "a".repeat(2048));
        assert!(check_cmdline_lengths(&long).is_err());
        check_cmdline_lengths(&format!("set x={}\n", "a".repeat(3000))).unwrap();
    }
}
