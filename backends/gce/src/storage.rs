//! Cloud Storage for the GCE backend: uploads (the CIDATA archive `images.insert` imports, the
//! `-deps-dir` files), downloads of small objects (a COS image's SBOM), listing and deleting under
//! a prefix (cleanup), and the `rawDisk` URL form.
//!
//! Built on `gcloud-storage` (the community crate that was `google-cloud-storage` 0.x), which
//! takes any endpoint and rides on the crate's own `reqwest`. Tokens come from [`Auth`] through
//! the crate's token-source trait, and only for an `https://` endpoint; an `http://` endpoint
//! (fake-gcs-server) is called anonymously. The crate does not retry, so every call here goes
//! through the backend's one [`RetryPolicy`], and it does not check what it uploaded, so every
//! upload compares the object's `crc32c` with the local data's.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::{ListObjectsRequest, ListObjectsResponse};
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::resumable_upload_client::{ChunkSize, UploadStatus};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::AUTHORIZATION;
use reqwest::Url;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::auth::Auth;
use crate::error::{ApiError, ErrorKind};
use crate::retry::{Failure, RetryPolicy, CONNECT_TIMEOUT};

/// Cloud Storage's public endpoint.
pub const DEFAULT_STORAGE_ENDPOINT: &str = "https://storage.googleapis.com";

/// Uploads up to this size go in one request; larger ones go resumable in chunks of this size
/// (a multiple of 256 KiB, as GCS requires), so a file is never held in memory whole.
const CHUNK: u64 = 8 << 20;

/// Objects per list page: GCS's default and maximum, set explicitly because fake-gcs-server
/// does not page at all without it.
const PAGE_SIZE: i32 = 1000;

/// Everything but RFC 3986's unreserved characters, which is what GCS asks object names in
/// URLs to be encoded with.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A Cloud Storage client at one endpoint.
#[derive(Clone)]
pub struct Gcs {
    client: Client,
    endpoint: String,
    retry: RetryPolicy,
}

impl fmt::Debug for Gcs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcs")
            .field("endpoint", &self.endpoint)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// The access tokens of an [`Auth`], as `gcloud-storage` asks for them.
#[derive(Debug)]
struct Tokens {
    auth: Auth,
    /// The endpoint, which decides whether credentials may be sent.
    endpoint: Url,
}

#[async_trait::async_trait]
impl token_source::TokenSource for Tokens {
    async fn token(&self) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
        let headers = self.auth.headers(&self.endpoint).await?;
        let value = headers
            .get(AUTHORIZATION)
            .context("the credentials gave no Authorization header")?
            .to_str()
            .context("the credentials gave an Authorization header that is not text")?;
        Ok(value.to_string())
    }
}

#[derive(Debug)]
struct TokensProvider(Arc<Tokens>);

impl token_source::TokenSourceProvider for TokensProvider {
    fn token_source(&self) -> Arc<dyn token_source::TokenSource> {
        self.0.clone()
    }
}

impl Gcs {
    /// A client for `endpoint`: `https://storage.googleapis.com` by default, or an emulator
    /// `http://127.0.0.1:P`. `auth` is used for `https://` endpoints only.
    pub fn new(endpoint: &str, auth: Auth) -> Result<Gcs> {
        let url = Url::parse(endpoint).with_context(|| {
            format!("storage endpoint {endpoint:?} is not a URL (expected https://storage.googleapis.com or http://HOST:PORT)")
        })?;
        if !matches!(url.scheme(), "http" | "https")
            || url.cannot_be_a_base()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            bail!("storage endpoint {endpoint} must be an http:// or https:// URL without query");
        }
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // One request carries at most one 8 MiB chunk: a request this slow has stalled,
            // and is retried. The retry policy bounds each call as a whole.
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client for Cloud Storage")?;
        let tokens: Option<Box<dyn token_source::TokenSourceProvider>> = match &auth {
            Auth::Google(_) if Auth::sends_credentials_to(&url) => {
                Some(Box::new(TokensProvider(Arc::new(Tokens {
                    auth,
                    endpoint: url,
                }))))
            }
            // Anonymous: no Authorization header at all.
            _ => None,
        };
        let client = Client::new(ClientConfig {
            http: Some(reqwest_middleware::ClientBuilder::new(http).build()),
            storage_endpoint: endpoint.clone(),
            token_source_provider: tokens,
            ..ClientConfig::default()
        });
        Ok(Gcs {
            client,
            endpoint,
            retry: RetryPolicy::default(),
        })
    }

    /// The endpoint from `STORAGE_EMULATOR_HOST` (the Go client's convention; a bare
    /// `host:port` means `http://`) or the default.
    pub fn default_endpoint() -> String {
        endpoint_from(std::env::var("STORAGE_EMULATOR_HOST").ok().as_deref())
    }

    /// Uploads the file at `path` as `gs://bucket/object`, reading it a chunk at a time, and
    /// checks the stored object's crc32c against the file's.
    pub async fn upload_file(&self, bucket: &str, object: &str, path: &Path) -> Result<()> {
        let size = tokio::fs::metadata(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        self.upload(bucket, object, &Source::File(path), size)
            .await
            .with_context(|| format!("uploading {} to gs://{bucket}/{object}", path.display()))
    }

    /// Uploads `bytes` as `gs://bucket/object` and checks the stored object's crc32c.
    pub async fn upload_bytes(&self, bucket: &str, object: &str, bytes: Vec<u8>) -> Result<()> {
        let size = bytes.len() as u64;
        self.upload(bucket, object, &Source::Bytes(&bytes), size)
            .await
            .with_context(|| format!("uploading {size} bytes to gs://{bucket}/{object}"))
    }

    /// The content of `gs://bucket/object`, held in memory whole (for small objects such as
    /// an SBOM). Errors name the object but no fix: the caller knows where the name came from.
    pub async fn download(&self, bucket: &str, object: &str) -> Result<Vec<u8>> {
        let request = GetObjectRequest {
            bucket: bucket.to_string(),
            object: object.to_string(),
            ..Default::default()
        };
        self.retry
            .run(|_| async {
                Ok(self
                    .client
                    .download_object(&request, &Range::default())
                    .await?)
            })
            .await
            .map_err(|f| {
                f.error
                    .context(format!("downloading gs://{bucket}/{object}"))
            })
    }

    /// Names of objects under prefix, every page.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        let target = format!("gs://{bucket}/{prefix}*");
        let mut names = Vec::new();
        self.pages(bucket, prefix, None, |page| {
            names.extend(page.items.into_iter().flatten().map(|o| o.name));
        })
        .await
        .map_err(|f| f.explain(Op::List, bucket, &target))?;
        Ok(names)
    }

    /// The folders directly under `prefix`, every page, sorted and once each: each object
    /// name under it cut after the first `/` past `prefix` (`tesla/450.51.06/` for
    /// `tesla/450.51.06/NVIDIA.run`). GCS folds the objects with the `/` delimiter, so a page
    /// holds up to a thousand folders however many objects each holds. Objects directly under
    /// `prefix` are not folders and are left out. Errors name the listing but no fix: the
    /// caller knows which flag chose the bucket.
    pub async fn list_folders(&self, bucket: &str, prefix: &str) -> Result<Vec<String>> {
        // A set: fake-gcs-server repeats every folder on every page.
        let mut folders = std::collections::BTreeSet::new();
        self.pages(bucket, prefix, Some("/"), |page| {
            folders.extend(page.prefixes.into_iter().flatten());
        })
        .await
        .map_err(|f| {
            f.error
                .context(format!("listing the folders of gs://{bucket}/{prefix}"))
        })?;
        Ok(folders.into_iter().collect())
    }

    /// Checks, writing nothing, that `bucket` exists and the caller may list it: one listing
    /// of at most one object.
    pub async fn check_bucket(&self, bucket: &str) -> Result<()> {
        let request = ListObjectsRequest {
            bucket: bucket.to_string(),
            max_results: Some(1),
            ..Default::default()
        };
        self.retry
            .run(|_| async { Ok(self.client.list_objects(&request).await?) })
            .await
            .map_err(|f| f.explain(Op::List, bucket, &format!("gs://{bucket}")))?;
        Ok(())
    }

    /// Hands every page of the listing of `prefix` (folded at `delimiter`) to `each`.
    async fn pages(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        mut each: impl FnMut(ListObjectsResponse),
    ) -> Result<(), Failure> {
        let mut page_token = None;
        loop {
            let request = ListObjectsRequest {
                bucket: bucket.to_string(),
                prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
                delimiter: delimiter.map(str::to_string),
                max_results: Some(PAGE_SIZE),
                page_token: page_token.take(),
                ..Default::default()
            };
            let mut page = self
                .retry
                .run(|_| async { Ok(self.client.list_objects(&request).await?) })
                .await?;
            let next = page.next_page_token.take();
            each(page);
            match next {
                Some(token) if !token.is_empty() => page_token = Some(token),
                _ => return Ok(()),
            }
        }
    }

    /// 404 counts as deleted.
    pub async fn delete(&self, bucket: &str, object: &str) -> Result<()> {
        let request = DeleteObjectRequest {
            bucket: bucket.to_string(),
            object: object.to_string(),
            ..Default::default()
        };
        match self
            .retry
            .run(|_| async { Ok(self.client.delete_object(&request).await?) })
            .await
        {
            Ok(()) => Ok(()),
            Err(f) if f.kind() == Some(ErrorKind::NotFound) => Ok(()),
            Err(f) => Err(f.explain(Op::Delete, bucket, &format!("gs://{bucket}/{object}"))),
        }
    }

    /// Deletes every object under prefix; returns how many it deleted.
    pub async fn delete_prefix(&self, bucket: &str, prefix: &str) -> Result<usize> {
        let names = self.list(bucket, prefix).await?;
        for name in &names {
            self.delete(bucket, name).await?;
        }
        Ok(names.len())
    }

    /// Uploads `size` bytes of `source`, whole again after a retryable failure, then checks
    /// the result.
    async fn upload(
        &self,
        bucket: &str,
        object: &str,
        source: &Source<'_>,
        size: u64,
    ) -> Result<()> {
        let (stored, crc) = transfer_policy(&self.retry, size)
            .run(|_| self.upload_once(bucket, object, source, size))
            .await
            .map_err(|f| f.explain(Op::Upload, bucket, &format!("gs://{bucket}/{object}")))?;
        verify(bucket, object, &stored, size, crc)
    }

    /// One try at an upload: one request up to [`CHUNK`] bytes, else a resumable session fed a
    /// chunk at a time. Returns the stored object and the crc32c of the data sent.
    async fn upload_once(
        &self,
        bucket: &str,
        object: &str,
        source: &Source<'_>,
        size: u64,
    ) -> Result<(Object, u32), Failure> {
        let request = UploadObjectRequest {
            bucket: bucket.to_string(),
            ..Default::default()
        };
        let media = UploadType::Simple(Media::new(object.to_string()));
        if size <= CHUNK {
            let data = source.read(0, size).await?;
            let crc = crc32c::crc32c(&data);
            let stored = self.client.upload_object(&request, data, &media).await?;
            return Ok((stored, crc));
        }
        let session = self
            .client
            .prepare_resumable_upload(&request, &media)
            .await?;
        let (mut offset, mut crc, mut hashed) = (0u64, 0u32, 0u64);
        loop {
            let len = CHUNK.min(size - offset);
            let data = source.read(offset, len).await?;
            // After a short commit the next chunk starts inside this one: hash only what is new.
            let fresh = (hashed - offset) as usize;
            if fresh < data.len() {
                crc = crc32c::crc32c_append(crc, &data[fresh..]);
                hashed = offset + len;
            }
            let range = ChunkSize::new(offset, offset + len - 1, Some(size));
            match session.upload_multiple_chunk(data, &range).await? {
                UploadStatus::Ok(stored) => return Ok((stored, crc)),
                // GCS may keep fewer bytes than were sent; go on from what it kept.
                UploadStatus::ResumeIncomplete(kept) if kept.last_byte + 1 > offset => {
                    offset = kept.last_byte + 1;
                }
                status => {
                    return Err(Failure {
                        error: anyhow!(
                            "the resumable upload made no progress: after the {len} bytes at \
                             offset {offset} of {size} the server answered {status:?}"
                        ),
                        retryable: true,
                    })
                }
            }
            if offset >= size {
                return Err(Failure::fatal(anyhow!(
                    "the server took all {size} bytes but did not finish the upload"
                )));
            }
        }
    }
}

/// `policy` for an upload of `size` bytes, sent whole again on a retry: each attempt may
/// take a minute plus a second a MiB (a link this slow is broken), the call three of those.
fn transfer_policy(policy: &RetryPolicy, size: u64) -> RetryPolicy {
    let attempt = Duration::from_secs(60 + size / (1 << 20));
    RetryPolicy {
        attempt_timeout: attempt,
        budget: attempt * 3,
        ..policy.clone()
    }
}

/// `https://storage.googleapis.com/BUCKET/OBJECT`, the form GCE's images.insert
/// rawDisk.source takes (object percent-encoded per segment as GCS wants).
pub fn raw_disk_url(bucket: &str, object: &str) -> String {
    let segments: Vec<String> = object
        .split('/')
        .map(|s| utf8_percent_encode(s, NOT_UNRESERVED).to_string())
        .collect();
    format!(
        "{DEFAULT_STORAGE_ENDPOINT}/{}/{}",
        utf8_percent_encode(bucket, NOT_UNRESERVED),
        segments.join("/")
    )
}

/// The endpoint for a `STORAGE_EMULATOR_HOST` value.
fn endpoint_from(emulator_host: Option<&str>) -> String {
    match emulator_host.map(str::trim).filter(|h| !h.is_empty()) {
        None => DEFAULT_STORAGE_ENDPOINT.to_string(),
        Some(url) if url.contains("://") => url.trim_end_matches('/').to_string(),
        Some(host) => format!("http://{}", host.trim_end_matches('/')),
    }
}

/// Checks that the stored object has the size and crc32c of the data sent.
fn verify(bucket: &str, object: &str, stored: &Object, size: u64, crc: u32) -> Result<()> {
    let local = base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes());
    let remote = stored.crc32c.as_deref().with_context(|| {
        format!("gs://{bucket}/{object}: the server returned no crc32c, so the upload cannot be verified")
    })?;
    if remote != local || u64::try_from(stored.size).ok() != Some(size) {
        bail!(
            "gs://{bucket}/{object}: the stored object ({} bytes, crc32c {remote}) differs from \
             the data sent ({size} bytes, crc32c {local}); the source changed during the upload \
             or the data was damaged in transit: upload again",
            stored.size
        );
    }
    Ok(())
}

/// Where an upload's data comes from.
enum Source<'a> {
    Bytes(&'a [u8]),
    File(&'a Path),
}

impl Source<'_> {
    /// `len` bytes at `offset`.
    async fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, Failure> {
        match self {
            Source::Bytes(bytes) => Ok(bytes[offset as usize..(offset + len) as usize].to_vec()),
            Source::File(path) => {
                let read = async {
                    let mut file = tokio::fs::File::open(path).await?;
                    file.seek(std::io::SeekFrom::Start(offset)).await?;
                    let mut data = vec![0; len as usize];
                    file.read_exact(&mut data).await?;
                    Ok::<_, std::io::Error>(data)
                };
                read.await.map_err(|e| {
                    Failure::fatal(anyhow::Error::new(e).context(format!(
                        "reading {len} bytes at offset {offset} of {} (did it change during the upload?)",
                        path.display()
                    )))
                })
            }
        }
    }
}

/// The calls, for what an error means.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Upload,
    List,
    Delete,
}

impl Op {
    fn verb(self) -> &'static str {
        match self {
            Op::Upload => "uploading",
            Op::List => "listing",
            Op::Delete => "deleting",
        }
    }

    /// The IAM permission the call needs.
    fn permission(self) -> &'static str {
        match self {
            Op::Upload => {
                "storage.objects.create (and storage.objects.delete to replace an object)"
            }
            Op::List => "storage.objects.list",
            Op::Delete => "storage.objects.delete",
        }
    }
}

impl Failure {
    fn api(error: ApiError) -> Failure {
        Failure {
            retryable: error.is_retryable(),
            error: anyhow::Error::new(error),
        }
    }

    fn kind(&self) -> Option<ErrorKind> {
        crate::error::kind_of(&self.error)
    }

    /// The error, naming the call, `target` (`gs://…`) and, where it is clear, the fix.
    fn explain(self, op: Op, bucket: &str, target: &str) -> anyhow::Error {
        let status = self
            .error
            .downcast_ref::<ApiError>()
            .map(|e| (e.status, e.kind()));
        let fix = match status {
            Some((401, _)) => Some(
                "the credentials were refused: refresh them (`gcloud auth application-default \
                 login`) or check GOOGLE_APPLICATION_CREDENTIALS"
                    .to_string(),
            ),
            Some((403, ErrorKind::Other)) => Some(format!(
                "the caller lacks {} on bucket {bucket}: grant it roles/storage.objectAdmin on \
                 gs://{bucket}, or pass a bucket it can write with -gcs-bucket",
                op.permission()
            )),
            Some((404, _)) if op != Op::Delete => Some(format!(
                "bucket {bucket} does not exist or the caller cannot see it: check -gcs-bucket"
            )),
            _ => None,
        };
        let what = format!("{} {target}", op.verb());
        match fix {
            Some(fix) => self.error.context(format!("{what}: {fix}")),
            None => self.error.context(what),
        }
    }
}

impl From<gcloud_storage::http::Error> for Failure {
    fn from(err: gcloud_storage::http::Error) -> Failure {
        use gcloud_storage::http::Error as E;
        match err {
            E::Response(r) => Failure::api(ApiError {
                status: r.code,
                reasons: r
                    .errors
                    .iter()
                    .map(|e| e.reason.clone())
                    .filter(|r| !r.is_empty())
                    .collect(),
                message: r.message,
                placement: None,
            }),
            // An error status whose body is not GCS's JSON (a proxy's page, fake-gcs-server's
            // plain "Not Found").
            E::HttpClient(e) if e.status().is_some() => Failure::api(ApiError::from_response(
                e.status().map_or(0, |s| s.as_u16()),
                &e.to_string(),
            )),
            // Never answered (reset, closed, timed out): safe to send again.
            E::HttpClient(e) => Failure {
                retryable: !e.is_builder(),
                error: anyhow::Error::new(e),
            },
            E::TokenSource(e) => {
                Failure::fatal(anyhow!(e).context("getting an access token for Cloud Storage"))
            }
            other => Failure::fatal(anyhow::Error::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use token_source::TokenSource;

    use super::*;
    use cos_customizer_testkit::testserver::{Reply, TestServer};

    fn fast(gcs: Gcs) -> Gcs {
        Gcs {
            retry: RetryPolicy::quick(),
            ..gcs
        }
    }

    fn envelope(code: u16, reason: &str) -> serde_json::Value {
        json!({"error": {"code": code, "message": reason, "errors": [{"domain": "global", "reason": reason, "message": reason}]}})
    }

    #[test]
    fn the_emulator_host_follows_the_go_clients_convention() {
        assert_eq!(endpoint_from(None), "https://storage.googleapis.com");
        assert_eq!(endpoint_from(Some(" ")), "https://storage.googleapis.com");
        assert_eq!(
            endpoint_from(Some("127.0.0.1:9023")),
            "http://127.0.0.1:9023"
        );
        assert_eq!(
            endpoint_from(Some("http://127.0.0.1:9023/")),
            "http://127.0.0.1:9023"
        );
        assert_eq!(
            endpoint_from(Some("https://gcs.example")),
            "https://gcs.example"
        );
    }

    #[test]
    fn raw_disk_urls_encode_each_segment() {
        assert_eq!(
            raw_disk_url("b", "w/cos-customizer/ab1/cidata.tar.gz"),
            "https://storage.googleapis.com/b/w/cos-customizer/ab1/cidata.tar.gz"
        );
        assert_eq!(
            raw_disk_url("b", "a b/c+d#e?/é~"),
            "https://storage.googleapis.com/b/a%20b/c%2Bd%23e%3F/%C3%A9~"
        );
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for endpoint in ["storage.googleapis.com", "ftp://x", "http://x/?a=b"] {
            let err = Gcs::new(endpoint, Auth::None).unwrap_err();
            assert!(format!("{err:#}").contains(endpoint), "{err:#}");
        }
        let gcs = Gcs::new("http://127.0.0.1:1/", Auth::None).unwrap();
        assert_eq!(gcs.endpoint, "http://127.0.0.1:1");
    }

    #[tokio::test]
    async fn tokens_come_from_the_credentials_for_https_only() {
        let (auth, asked) = crate::auth::tests::fixed_token();
        let tokens = Tokens {
            auth: auth.clone(),
            endpoint: Url::parse(DEFAULT_STORAGE_ENDPOINT).unwrap(),
        };
        assert_eq!(tokens.token().await.unwrap(), "Bearer secret-token");

        let server = TestServer::start(vec![Reply::Json(200, json!({"items": []}))]).await;
        let gcs = Gcs::new(&server.origin, auth).unwrap();
        assert!(gcs.list("b", "p/").await.unwrap().is_empty());
        assert_eq!(server.seen()[0].authorization, None);
        assert_eq!(
            asked.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "asked for http"
        );
    }

    #[tokio::test]
    async fn rate_limits_server_errors_and_resets_are_retried() {
        let server = TestServer::start(vec![
            Reply::Json(429, envelope(429, "rateLimitExceeded")),
            Reply::Reset,
            Reply::Json(503, envelope(503, "backendError")),
            Reply::Json(200, json!({"items": [], "nextPageToken": "t2"})),
            Reply::Json(200, json!({})),
        ])
        .await;
        let gcs = fast(Gcs::new(&server.origin, Auth::None).unwrap());
        assert!(gcs.list("b", "w/x").await.unwrap().is_empty());
        let seen = server.seen();
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[0].path(), "/storage/v1/b/b/o");
        assert_eq!(seen[0].query("prefix").as_deref(), Some("w%2Fx"));
        assert_eq!(seen[0].query("maxResults").as_deref(), Some("1000"));
        assert_eq!(seen[4].query("pageToken").as_deref(), Some("t2"));
    }

    #[tokio::test]
    async fn retries_stop_after_the_last_attempt() {
        let server = TestServer::start(
            (0..4)
                .map(|_| Reply::Json(503, envelope(503, "backendError")))
                .collect(),
        )
        .await;
        let gcs = fast(Gcs::new(&server.origin, Auth::None).unwrap());
        let err = gcs.delete("b", "o").await.unwrap_err();
        assert_eq!(server.seen().len(), 4);
        assert_eq!(crate::error::kind_of(&err), Some(ErrorKind::Transient));
        assert!(
            format!("{err:#}").starts_with("deleting gs://b/o: "),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn a_missing_object_is_deleted_and_a_missing_bucket_is_named() {
        let server = TestServer::start(vec![
            Reply::Json(404, envelope(404, "notFound")),
            Reply::Json(404, envelope(404, "notFound")),
        ])
        .await;
        let gcs = fast(Gcs::new(&server.origin, Auth::None).unwrap());
        gcs.delete("b", "w/o").await.unwrap();
        assert_eq!(server.seen()[0].path(), "/storage/v1/b/b/o/w%2Fo");
        let err = format!("{:#}", gcs.list("nob", "w/").await.unwrap_err());
        assert!(
            err.starts_with("listing gs://nob/w/*: bucket nob does not exist"),
            "{err}"
        );
        assert!(err.contains("-gcs-bucket"), "{err}");
        assert_eq!(server.seen().len(), 2, "a 404 was retried");
    }

    #[tokio::test]
    async fn a_permission_error_names_the_permission_and_is_not_retried() {
        let server = TestServer::start(vec![
            Reply::Json(403, envelope(403, "forbidden")),
            Reply::Json(403, envelope(403, "forbidden")),
            Reply::Json(401, envelope(401, "required")),
        ])
        .await;
        let gcs = fast(Gcs::new(&server.origin, Auth::None).unwrap());
        let err = format!(
            "{:#}",
            gcs.upload_bytes("b", "w/o", b"{}".to_vec())
                .await
                .unwrap_err()
        );
        assert!(err.contains("gs://b/w/o"), "{err}");
        assert!(err.contains("storage.objects.create"), "{err}");
        assert!(err.contains("roles/storage.objectAdmin"), "{err}");
        let err = format!("{:#}", gcs.delete("b", "w/o").await.unwrap_err());
        assert!(err.contains("storage.objects.delete on bucket b"), "{err}");
        let err = format!("{:#}", gcs.list("b", "").await.unwrap_err());
        assert!(err.contains("application-default login"), "{err}");
        assert_eq!(server.seen().len(), 3);
    }

    #[test]
    fn an_upload_is_checked_against_the_stored_crc32c_and_size() {
        let data = b"hello";
        let crc = crc32c::crc32c(data);
        let stored = |crc32c: Option<&str>, size| Object {
            crc32c: crc32c.map(str::to_string),
            size,
            ..Object::default()
        };
        // fake-gcs-server's answer for "hello".
        verify("b", "o", &stored(Some("mnG7TA=="), 5), 5, crc).unwrap();
        let err = verify("b", "o", &stored(Some("AAAAAA=="), 5), 5, crc).unwrap_err();
        assert!(err.to_string().contains("gs://b/o"), "{err}");
        assert!(err.to_string().contains("upload again"), "{err}");
        assert!(verify("b", "o", &stored(Some("mnG7TA=="), 4), 5, crc).is_err());
        let err = verify("b", "o", &stored(None, 5), 5, crc).unwrap_err();
        assert!(err.to_string().contains("no crc32c"), "{err}");
    }
}
