//! The guestfwd helper on its own, for tests and manual runs:
//! `metadata_proxy 127.0.0.1:PORT` (the `cos-customizer` binary has the same as a
//! hidden subcommand).

fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: metadata_proxy 127.0.0.1:PORT"))?;
    cos_customizer_qemu::proxy_stdio(&addr)
}
