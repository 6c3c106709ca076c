//! The program QEMU's `guestfwd` runs for each guest connection to the metadata
//! address: it joins its stdin/stdout to the host metadata server's TCP port.
//!
//! Plain threads, not tokio: the stdin reader blocks, and a tokio runtime would wait
//! for it when shutting down after the server closed the connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};

use anyhow::{Context, Result};

/// Copies stdin to `addr` (`127.0.0.1:PORT`) and the answer to stdout until the server
/// closes. Call it from a plain thread or before starting a tokio runtime.
pub fn proxy_stdio(addr: &str) -> Result<()> {
    proxy(addr, std::io::stdin(), std::io::stdout())
}

/// [`proxy_stdio`] with any input and output.
pub fn proxy(addr: &str, input: impl Read + Send + 'static, mut output: impl Write) -> Result<()> {
    let conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let mut upstream = conn
        .try_clone()
        .with_context(|| format!("cloning the connection to {addr}"))?;
    let mut input = input;
    // Detached: it may block on stdin after the server has answered and closed.
    std::thread::spawn(move || {
        if std::io::copy(&mut input, &mut upstream).is_ok() {
            // Tell the server the request is complete.
            let _ = upstream.shutdown(Shutdown::Write);
        }
    });
    let mut downstream = conn;
    std::io::copy(&mut downstream, &mut output)
        .with_context(|| format!("copying the answer from {addr}"))?;
    output.flush().context("flushing the answer")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata_server::MetadataServer;
    use std::collections::BTreeMap;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_a_request_and_its_answer() {
        let attrs = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let server = MetadataServer::start("vm", attrs).await.unwrap();
        let addr = server.addr().to_string();
        let req = "GET /computeMetadata/v1/instance/attributes/k HTTP/1.1\r\n\
                   Metadata-Flavor: Google\r\n\r\n";
        let out = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            proxy(
                &addr,
                std::io::Cursor::new(req.as_bytes().to_vec()),
                &mut out,
            )
            .map(|_| out)
        })
        .await
        .unwrap()
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK") && text.ends_with("\r\n\r\nv"),
            "{text}"
        );
    }

    #[test]
    fn unreachable_server_is_named() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = proxy(&port.to_string(), std::io::empty(), Vec::new()).unwrap_err();
        assert!(
            format!("{e:#}").contains(&format!("connecting to {port}")),
            "{e:#}"
        );
    }
}
