//! The GCE metadata server, over ureq: polling an instance attribute and fetching the
//! service account's token.

use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::http;

/// The server's fixed link-local address, so no name lookup is needed (a static glibc
/// binary cannot rely on the VM's NSS modules).
const DEFAULT_HOST: &str = "169.254.169.254";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A metadata server, the real one or a stand-in.
#[derive(Debug, Clone)]
pub struct Metadata {
    /// `http://<host>/computeMetadata/v1/`.
    base: String,
    agent: ureq::Agent,
}

impl Metadata {
    /// The real server, or `GCE_METADATA_HOST` (`host[:port]`) as Google's client libraries allow.
    pub fn from_env() -> Self {
        match std::env::var("GCE_METADATA_HOST") {
            Ok(h) if !h.is_empty() => Metadata::at(&h),
            _ => Metadata::at(DEFAULT_HOST),
        }
    }

    /// The server at `host[:port]`, port 80 when none is given.
    pub fn at(host: &str) -> Self {
        Metadata {
            base: format!("http://{host}/computeMetadata/v1/"),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(IO_TIMEOUT)
                .timeout_read(IO_TIMEOUT)
                .build(),
        }
    }

    /// GETs `/computeMetadata/v1/<path>`; the body of a 200 answer, an error for anything else.
    fn get(&self, path: &str, what: &str) -> Result<String> {
        let req = self
            .agent
            .get(&format!("{}{path}", self.base))
            .set("Metadata-Flavor", "Google");
        let resp = http::call(req, what)?;
        if resp.status() != 200 {
            bail!("{what}: HTTP {}", resp.status());
        }
        resp.into_string()
            .with_context(|| format!("{what}: reading the answer"))
    }

    /// Polls the instance attribute `key` every `interval` until it exists or `timeout` passes.
    pub fn wait_for_attribute(
        &self,
        key: &str,
        timeout: Duration,
        interval: Duration,
    ) -> Result<()> {
        let path = format!("instance/attributes/{key}");
        let what = format!("reading metadata attribute {key}");
        let deadline = Instant::now() + timeout;
        println!("Waiting for metadata attribute {key}");
        loop {
            // Not found yet and a server that is briefly unreachable look the same: keep polling.
            if self.get(&path, &what).is_ok() {
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
        let body = self.get(
            "instance/service-accounts/default/token",
            "getting the service account token from the metadata server",
        )?;
        let t: Token = serde_json::from_str(&body)
            .context("parsing the service account token from the metadata server")?;
        Ok(t.access_token)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use cos_customizer_common::protocol::ACK_METADATA_KEY;
    use cos_customizer_testkit::testserver::{BlockingTestServer, Reply, TestServer};
    use std::net::TcpListener;

    /// A loopback server that answers each request with the next `(status, body)` and
    /// records the requests; the last answer repeats.
    pub fn serve(answers: Vec<(u16, &'static str)>) -> BlockingTestServer {
        let replies = answers
            .into_iter()
            .map(|(status, body)| Reply::Text(status, body.into()))
            .collect();
        BlockingTestServer::start(TestServer::repeating_last(replies))
    }

    #[test]
    fn waits_until_the_attribute_exists() {
        let server = serve(vec![(404, "nope"), (404, "nope"), (200, "1")]);
        Metadata::at(server.host())
            .wait_for_attribute(
                ACK_METADATA_KEY,
                Duration::from_secs(5),
                Duration::from_millis(10),
            )
            .unwrap();
        let seen = server.seen();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].method, "GET");
        assert_eq!(
            seen[0].target,
            format!("/computeMetadata/v1/instance/attributes/{ACK_METADATA_KEY}")
        );
        assert_eq!(seen[0].header("metadata-flavor"), Some("Google"));
    }

    #[test]
    fn times_out_with_a_clear_message() {
        let server = serve(vec![(404, "nope")]);
        let e = Metadata::at(server.host())
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
        let server = serve(vec![(
            200,
            r#"{"access_token":"tok","expires_in":3599,"token_type":"Bearer"}"#,
        )]);
        assert_eq!(Metadata::at(server.host()).access_token().unwrap(), "tok");
        assert_eq!(
            server.seen()[0].target,
            "/computeMetadata/v1/instance/service-accounts/default/token"
        );
    }
}
