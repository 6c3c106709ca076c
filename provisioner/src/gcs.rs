//! Downloads `gs://` objects with the VM's service account, through the GCS JSON API.

use std::fs::File;
use std::io;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::http;
use crate::metadata::Metadata;

/// Cloud Storage's public endpoint.
pub const ENDPOINT: &str = "https://storage.googleapis.com";

/// Every byte but RFC 3986's unreserved characters: letters, digits, `-`, `.`, `_`, `~`.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A GCS JSON API endpoint, and how to authenticate to it.
pub struct Gcs {
    /// `https://storage.googleapis.com`, or an emulator's URL.
    endpoint: String,
    /// Where the token comes from; `None` for an emulator, which needs none.
    metadata: Option<Metadata>,
    /// Whether a metadata server with no token for us is fine: a build's own endpoint may
    /// need none (fake-gcs-server), where Cloud Storage itself always does.
    token_optional: bool,
    agent: ureq::Agent,
}

impl Gcs {
    /// Real GCS, or `STORAGE_EMULATOR_HOST` (as Google's client libraries honor it).
    pub fn from_env() -> Self {
        match std::env::var("STORAGE_EMULATOR_HOST") {
            Ok(h) if !h.is_empty() => Gcs::emulator(&h),
            _ => Gcs::new(ENDPOINT.into(), Some(Metadata::from_env())),
        }
    }

    /// The build's storage endpoint (the config's `StorageEndpoint`), with the VM's token
    /// when the metadata server has one; [`Gcs::from_env`] when the build gave none.
    pub fn for_build(endpoint: &str) -> Self {
        if endpoint.is_empty() {
            return Gcs::from_env();
        }
        let mut gcs = Gcs::new(url_of(endpoint), Some(Metadata::from_env()));
        gcs.token_optional = true;
        gcs
    }

    /// An emulator at `host[:port]` or at a URL; it takes no token.
    pub fn emulator(host: &str) -> Self {
        Gcs::new(url_of(host), None)
    }

    /// The endpoint's URL, without a trailing `/`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn new(endpoint: String, metadata: Option<Metadata>) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(120))
            .build();
        Gcs {
            endpoint,
            metadata,
            token_optional: false,
            agent,
        }
    }

    /// Downloads `gs://bucket/object` to `dest`.
    pub fn download(&self, url: &str, dest: &Path) -> Result<()> {
        let (bucket, object) = parse_gs_url(url)?;
        let api = format!(
            "{}/storage/v1/b/{}/o/{}?alt=media",
            self.endpoint,
            percent_encode(bucket),
            percent_encode(object)
        );
        let mut req = self.agent.get(&api);
        if let Some(md) = &self.metadata {
            match md.access_token() {
                Ok(token) => req = req.set("Authorization", &format!("Bearer {token}")),
                Err(e) if self.token_optional => {
                    println!("Downloading {url} without a token ({e:#})")
                }
                Err(e) => return Err(e),
            }
        }
        let resp = http::call(req, &format!("downloading {url}"))?;
        let mut file =
            File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
        io::copy(&mut resp.into_reader(), &mut file)
            .with_context(|| format!("downloading {url} to {}", dest.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", dest.display()))
    }
}

/// A `host[:port]` (`STORAGE_EMULATOR_HOST`'s form) or a URL, as a URL with no trailing `/`.
fn url_of(host: &str) -> String {
    if host.contains("://") {
        host.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", host.trim_end_matches('/'))
    }
}

/// `gs://bucket/object` split into bucket and object.
pub fn parse_gs_url(url: &str) -> Result<(&str, &str)> {
    url.strip_prefix("gs://")
        .and_then(|rest| rest.split_once('/'))
        .filter(|(b, o)| !b.is_empty() && !o.is_empty())
        .with_context(|| format!("{url:?} is not a gs://bucket/object URL"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters (object names may hold `/`).
fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cos_customizer_testkit::fake_gcs::{self, FakeGcs};

    #[test]
    fn gs_urls() {
        assert_eq!(parse_gs_url("gs://b/d/o.tar").unwrap(), ("b", "d/o.tar"));
        for bad in ["gs://b", "gs:///o", "gs://b/", "http://b/o"] {
            assert!(parse_gs_url(bad).is_err(), "{bad}");
        }
        assert_eq!(percent_encode("a/b c+d~é"), "a%2Fb%20c%2Bd~%C3%A9");
        assert_eq!(url_of("127.0.0.1:4443"), "http://127.0.0.1:4443");
        assert_eq!(url_of("https://s.example/"), "https://s.example");
    }

    // A Tokio test only because the harness is async; the client under test is blocking.
    #[tokio::test]
    async fn downloads_from_fake_gcs() {
        if !fake_gcs::require() {
            return;
        }
        let fake = FakeGcs::start("bkt").await.unwrap();
        fake.put("bkt", "dir/ctx a.tar", b"hello");
        let d = tempfile::tempdir().unwrap();
        let gcs = Gcs::emulator(&fake.endpoint());
        gcs.download("gs://bkt/dir/ctx a.tar", &d.path().join("out"))
            .unwrap();
        assert_eq!(std::fs::read(d.path().join("out")).unwrap(), b"hello");
        let e = gcs
            .download("gs://bkt/missing", &d.path().join("x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("gs://bkt/missing") && e.contains("404"), "{e}");
    }

    /// A build's endpoint takes the VM's token when there is one, and goes without when the
    /// metadata server has none (a local build).
    #[tokio::test]
    async fn a_builds_endpoint_sends_the_token_it_can_get() {
        if !fake_gcs::require() {
            return;
        }
        let fake = FakeGcs::start("bkt").await.unwrap();
        fake.put("bkt", "o", b"x");
        let d = tempfile::tempdir().unwrap();
        for (status, body) in [
            (
                200,
                r#"{"access_token":"tok","expires_in":3599,"token_type":"Bearer"}"#,
            ),
            (404, "no service account"),
        ] {
            let server = crate::metadata::tests::serve(vec![(status, body)]);
            let mut gcs = Gcs::new(fake.endpoint(), Some(Metadata::at(server.host())));
            gcs.token_optional = true;
            gcs.download("gs://bkt/o", &d.path().join("o")).unwrap();
            assert_eq!(std::fs::read(d.path().join("o")).unwrap(), b"x");
            assert_eq!(server.seen().len(), 1);
        }
        let server = crate::metadata::tests::serve(vec![(404, "none")]);
        let strict = Gcs::new(fake.endpoint(), Some(Metadata::at(server.host())));
        assert!(strict.download("gs://bkt/o", &d.path().join("o")).is_err());
    }
}
