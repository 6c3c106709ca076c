//! The GCE metadata server: a plain HTTP/1.0 GET, enough for polling an attribute and
//! fetching the service account token, without an HTTP stack.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What the server is called in requests.
const HOST_NAME: &str = "metadata.google.internal";
/// Where it is: the fixed link-local address, so no name lookup is needed (a static glibc
/// binary cannot rely on the VM's NSS modules).
const DEFAULT_ADDR: &str = "169.254.169.254:80";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Metadata {
    /// `host:port` to connect to.
    addr: String,
    /// The `Host` header.
    host: String,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Metadata {
    /// The real server, or `GCE_METADATA_HOST` (`host[:port]`) as Google's client libraries allow.
    pub fn from_env() -> Self {
        match std::env::var("GCE_METADATA_HOST") {
            Ok(h) if !h.is_empty() => Metadata::at(&h),
            _ => Metadata {
                addr: DEFAULT_ADDR.into(),
                host: HOST_NAME.into(),
            },
        }
    }

    pub fn at(host: &str) -> Self {
        let addr = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        Metadata {
            addr,
            host: host.to_string(),
        }
    }

    /// GETs `/computeMetadata/v1/<path>` and returns the status and body.
    pub fn get(&self, path: &str) -> Result<Response> {
        let url = format!("/computeMetadata/v1/{path}");
        let addr = self
            .addr
            .to_socket_addrs()
            .with_context(|| format!("resolving metadata server {}", self.addr))?
            .next()
            .with_context(|| format!("resolving metadata server {}: no address", self.addr))?;
        let mut conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to metadata server {}", self.addr))?;
        conn.set_read_timeout(Some(IO_TIMEOUT))
            .context("setting the metadata read timeout")?;
        write!(
            conn,
            "GET {url} HTTP/1.0\r\nHost: {}\r\nMetadata-Flavor: Google\r\n\r\n",
            self.host
        )
        .with_context(|| format!("sending GET {url} to the metadata server"))?;
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw)
            .with_context(|| format!("reading the metadata server's reply to GET {url}"))?;
        parse_response(&raw).with_context(|| format!("parsing the reply to GET {url}"))
    }

    /// Polls the instance attribute `key` every `interval` until it exists or `timeout` passes.
    pub fn wait_for_attribute(
        &self,
        key: &str,
        timeout: Duration,
        interval: Duration,
    ) -> Result<()> {
        let path = format!("instance/attributes/{key}");
        let deadline = Instant::now() + timeout;
        println!("Waiting for metadata attribute {key}");
        loop {
            // Not found yet and a server that is briefly unreachable look the same: keep polling.
            if let Ok(Response { status: 200, .. }) = self.get(&path) {
                println!("Found metadata attribute {key}");
                return Ok(());
            }
            if Instant::now() + interval > deadline {
                bail!(
                    "timed out after {}s waiting for metadata attribute {key}",
                    timeout.as_secs()
                );
            }
            thread::sleep(interval);
        }
    }

    /// The VM service account's OAuth access token.
    pub fn access_token(&self) -> Result<String> {
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: String,
        }
        let r = self.get("instance/service-accounts/default/token")?;
        if r.status != 200 {
            bail!(
                "getting the service account token from the metadata server: HTTP {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            );
        }
        let t: Token = serde_json::from_slice(&r.body)
            .context("parsing the service account token from the metadata server")?;
        Ok(t.access_token)
    }
}

fn parse_response(raw: &[u8]) -> Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    Ok(Response {
        status,
        body: raw[split + 4..].to_vec(),
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use cos_customizer_common::protocol::ACK_METADATA_KEY;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A loopback server that answers each request with the next `(status, body)` and
    /// records the request heads; the last answer repeats.
    pub fn serve(answers: Vec<(u16, &'static str)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let mut conn = conn.unwrap();
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                log.lock().unwrap().push(head);
                let (status, body) = answers[i.min(answers.len() - 1)];
                let _ = write!(
                    conn,
                    "HTTP/1.0 {status} X\r\nContent-Type: text/plain\r\n\r\n{body}"
                );
            }
        });
        (addr, seen)
    }

    #[test]
    fn waits_until_the_attribute_exists() {
        let (addr, seen) = serve(vec![(404, "nope"), (404, "nope"), (200, "1")]);
        Metadata::at(&addr)
            .wait_for_attribute(
                ACK_METADATA_KEY,
                Duration::from_secs(5),
                Duration::from_millis(10),
            )
            .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(
            seen[0].starts_with(&format!(
                "GET /computeMetadata/v1/instance/attributes/{ACK_METADATA_KEY} HTTP/1.0\r\n"
            )) && seen[0].contains("Metadata-Flavor: Google\r\n"),
            "{}",
            seen[0]
        );
    }

    #[test]
    fn times_out_with_a_clear_message() {
        let (addr, _) = serve(vec![(404, "nope")]);
        let e = Metadata::at(&addr)
            .wait_for_attribute(
                ACK_METADATA_KEY,
                Duration::from_millis(100),
                Duration::from_millis(20),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("timed out") && e.contains(ACK_METADATA_KEY),
            "{e}"
        );
    }

    #[test]
    fn unreachable_server_keeps_polling_until_timeout() {
        // Bind then drop, so the port refuses connections.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = Metadata::at(&addr.to_string())
            .wait_for_attribute("K", Duration::from_millis(50), Duration::from_millis(10))
            .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
    }

    #[test]
    fn access_token() {
        let (addr, seen) = serve(vec![(
            200,
            r#"{"access_token":"tok","expires_in":3599,"token_type":"Bearer"}"#,
        )]);
        assert_eq!(Metadata::at(&addr).access_token().unwrap(), "tok");
        assert!(seen.lock().unwrap()[0]
            .starts_with("GET /computeMetadata/v1/instance/service-accounts/default/token "));
    }
}
