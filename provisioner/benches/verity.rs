//! Benchmark: writing the dm-verity hash tree of a 256 MiB file (`VERITY_BENCH_MIB` to
//! change it) with `disk::verity::format` and with `veritysetup format`, same options and
//! salt, taking turns. Prints each run's MiB/s, the best of each and their ratio; asserts
//! only that both give the same root hash. Run with `cargo bench -p provisioner --bench verity`.

// The provisioner is a binary crate, so the module is compiled in here from its source.
// Cargo builds benchmarks with `cfg(test)` but without the test harness, so the module's
// test helpers come along while its `#[test]` functions do not: they are unused here.
#[allow(dead_code)]
#[path = "../src/disk/verity.rs"]
mod verity;

use std::fs;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context as _, Result};

const ROUNDS: usize = 3;

fn main() -> Result<()> {
    let mib: u64 = match std::env::var("VERITY_BENCH_MIB") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("VERITY_BENCH_MIB={v} is not a whole number of MiB"))?,
        Err(_) => 256,
    };
    let data_blocks = mib * 256;
    let params = verity::Params {
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks,
        hash_offset: data_blocks * 4096,
        salt: Some((0..32).collect()),
    };
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let img = dir.path().join("data.img");
    // Pseudo-random data, and room for the tree (under 1/127 of the data).
    let mut bytes = vec![0u8; (mib << 20) as usize + (mib << 20) as usize / 64];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in &mut bytes[..(mib << 20) as usize] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(&img, &bytes).with_context(|| format!("writing {}", img.display()))?;
    drop(bytes);

    let veritysetup_args = [
        "format".to_string(),
        "--no-superblock".into(),
        "--format=0".into(),
        "--hash=sha256".into(),
        "--data-block-size=4096".into(),
        "--hash-block-size=4096".into(),
        format!("--data-blocks={data_blocks}"),
        format!("--hash-offset={}", data_blocks * 4096),
        format!(
            "--salt={}",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        ),
    ];
    println!(
        "dm-verity hash tree of {mib} MiB ({data_blocks} blocks of 4 KiB), file in the page cache:"
    );
    let (mut ours_best, mut theirs_best) = (0f64, 0f64);
    for round in 1..=ROUNDS {
        let t = Instant::now();
        let (root, _) = verity::format(&img, &params)?;
        let ours = mib as f64 / t.elapsed().as_secs_f64();

        let t = Instant::now();
        let out = Command::new("veritysetup")
            .args(&veritysetup_args)
            .arg(&img)
            .arg(&img)
            .output()
            .context("running veritysetup format (install cryptsetup-bin)")?;
        let theirs = mib as f64 / t.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "veritysetup format failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            stdout
                .lines()
                .any(|l| l.strip_prefix("Root hash:").map(str::trim) == Some(root.as_str())),
            "veritysetup's root hash differs from ours ({root}):\n{stdout}"
        );
        println!("  round {round}: ours {ours:7.1} MiB/s   veritysetup {theirs:7.1} MiB/s");
        ours_best = ours_best.max(ours);
        theirs_best = theirs_best.max(theirs);
    }
    println!(
        "best: ours {ours_best:.1} MiB/s, veritysetup {theirs_best:.1} MiB/s, ours/veritysetup {:.2}",
        ours_best / theirs_best
    );
    Ok(())
}
