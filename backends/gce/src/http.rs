//! The HTTP layer under the Compute calls: JSON over `reqwest` against a base URL, GCE's error
//! envelope turned into an [`ApiError`], and one retry policy for every call.
//!
//! The base URL keeps upstream's `-compute-endpoint` meaning: a base path such as
//! `https://compute.googleapis.com/compute/v1/` (with or without the trailing slash) that
//! `projects/...` is joined to, so staging paths and emulators work as they do with upstream.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Method, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::auth::Auth;
use crate::error::ApiError;

/// Compute's public base path, upstream's `-compute-endpoint` default.
pub const DEFAULT_COMPUTE_BASE: &str = "https://compute.googleapis.com/compute/v1/";

/// How often and how patiently a failed call is sent again.
///
/// Retried: 429, 5xx, 403 `rateLimitExceeded`/`userRateLimitExceeded`, and calls that never got
/// an answer (a reset or closed connection, a timeout). Attempt `n` (from 1) waits
/// `base_delay × n × (1 + a random fraction)`, at most `max_delay`: Daisy's (1–2 s) × attempt,
/// jittered so parallel builds do not retry in step.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// How many times a call is sent in all, at least once.
    pub attempts: u32,
    /// The first wait before the random part.
    pub base_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        // A uuid's random bits are the one source of randomness already in the tree.
        let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
        self.base_delay
            .saturating_mul(attempt.max(1))
            .mul_f64(1.0 + jitter)
            .min(self.max_delay)
    }
}

/// A fresh `requestId` for a mutation. The same id is sent with every retry of one call, so GCE
/// answers a retried insert with the first one's operation instead of `alreadyExists`.
pub fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A JSON API at a base URL, with credentials and a retry policy.
#[derive(Clone, Debug)]
pub struct Api {
    base: Url,
    client: reqwest::Client,
    auth: Auth,
    retry: RetryPolicy,
}

impl Api {
    /// An API at `base` (an `http` or `https` base path), using `auth` on `https` only.
    pub fn new(base: &str, auth: Auth) -> Result<Api> {
        let base = Url::parse(base).with_context(|| format!("endpoint {base:?} is not a URL"))?;
        if !matches!(base.scheme(), "http" | "https") {
            bail!("endpoint {base} must be an http:// or https:// URL");
        }
        if base.cannot_be_a_base() || base.query().is_some() || base.fragment().is_some() {
            bail!("endpoint {base} must be a base path, without query or fragment");
        }
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            // Above GCE's `/wait` deadline (about 2 minutes), so a wait is never cut short.
            .timeout(Duration::from_secs(300))
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            base,
            client,
            auth,
            retry: RetryPolicy::default(),
        })
    }

    /// The same API with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Api {
        self.retry = retry;
        self
    }

    /// The URL of `segments` under the base path, each segment percent-encoded.
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("checked in Api::new: the base can be a base")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// `GET` the resource at `segments`.
    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T> {
        self.send(Method::GET, segments, query, None::<&()>).await
    }

    /// `POST` `body` to `segments`.
    pub async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        body: &impl Serialize,
    ) -> Result<T> {
        self.send(Method::POST, segments, query, Some(body)).await
    }

    /// `DELETE` the resource at `segments`.
    pub async fn delete<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<T> {
        self.send(Method::DELETE, segments, query, None::<&()>)
            .await
    }

    /// Sends one call, retrying as [`RetryPolicy`] says, and reads its JSON answer. A GCE error
    /// comes back as an [`ApiError`] under a context naming the method and URL.
    async fn send<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let what = || format!("{method} {url}");
        let attempts = self.retry.attempts.max(1);
        for attempt in 1..=attempts {
            let last = attempt == attempts;
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .headers(self.auth.headers(&url).await?);
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(response) => response,
                // Never answered (reset, closed, timed out): safe to resend, since mutations
                // carry a requestId.
                Err(err) if !last && !err.is_builder() => {
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    continue;
                }
                Err(err) => return Err(err).with_context(what),
            };
            let status = response.status();
            let text = match response.text().await {
                Ok(text) => text,
                Err(_) if !last => {
                    tokio::time::sleep(self.retry.delay(attempt)).await;
                    continue;
                }
                Err(err) => return Err(err).with_context(what),
            };
            if status.is_success() {
                return serde_json::from_str(&text).with_context(|| {
                    let start: String = text.chars().take(200).collect();
                    format!("{}: unexpected answer {start:?}", what())
                });
            }
            let err = ApiError::from_response(status.as_u16(), &text);
            if !last && err.is_retryable() {
                tokio::time::sleep(self.retry.delay(attempt)).await;
                continue;
            }
            return Err(anyhow::Error::new(err).context(what()));
        }
        unreachable!("the last attempt returns")
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::error::{kind_of, ErrorKind};
    use cos_customizer_testkit::testserver::{Reply, TestServer};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        }
    }

    async fn api(replies: Vec<Reply>) -> (Api, TestServer) {
        let server = TestServer::start(replies).await;
        let api = Api::new(&format!("{}/compute/v1/", server.origin), Auth::None)
            .unwrap()
            .with_retry(fast());
        (api, server)
    }

    fn envelope(code: u16, reason: &str) -> Value {
        json!({"error": {"code": code, "message": reason, "errors": [{"reason": reason}]}})
    }

    #[test]
    fn the_base_path_is_joined_with_or_without_its_slash() {
        for base in [
            "https://compute.googleapis.com/compute/v1/",
            "https://compute.googleapis.com/compute/v1",
        ] {
            let api = Api::new(base, Auth::None).unwrap();
            assert_eq!(
                api.url(&["projects", "p", "zones", "z", "disks"]).as_str(),
                "https://compute.googleapis.com/compute/v1/projects/p/zones/z/disks"
            );
        }
        let staging =
            Api::new("https://www.googleapis.com/compute/staging_v1/", Auth::None).unwrap();
        assert_eq!(
            staging.url(&["projects", "p"]).as_str(),
            "https://www.googleapis.com/compute/staging_v1/projects/p"
        );
        let odd = Api::new(DEFAULT_COMPUTE_BASE, Auth::None).unwrap();
        assert_eq!(
            odd.url(&["projects", "p", "global", "images", "family", "a/b?c"])
                .path(),
            "/compute/v1/projects/p/global/images/family/a%2Fb%3Fc"
        );
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for base in [
            "compute.googleapis.com",
            "ftp://x/compute/v1/",
            "https://x/v1/?a=b",
        ] {
            assert!(Api::new(base, Auth::None).is_err(), "{base} accepted");
        }
    }

    #[test]
    fn delays_grow_with_the_attempt_are_jittered_and_capped() {
        let policy = RetryPolicy::default();
        for attempt in 1..=3u32 {
            let d = policy.delay(attempt);
            assert!(d >= Duration::from_secs(attempt.into()), "{attempt}: {d:?}");
            assert!(
                d < Duration::from_secs((2 * attempt).into()),
                "{attempt}: {d:?}"
            );
        }
        assert_eq!(policy.delay(100), policy.max_delay);
        let samples: std::collections::BTreeSet<_> = (0..20).map(|_| policy.delay(1)).collect();
        assert!(samples.len() > 1, "no jitter");
    }

    #[tokio::test]
    async fn rate_limits_server_errors_and_resets_are_retried() {
        let (api, server) = api(vec![
            Reply::Json(429, json!({})),
            Reply::Json(503, envelope(503, "backendError")),
            Reply::Reset,
            Reply::Json(403, envelope(403, "rateLimitExceeded")),
            Reply::Json(200, json!({"ok": true})),
        ])
        .await;
        let api = api.with_retry(RetryPolicy {
            attempts: 5,
            ..fast()
        });
        let value: Value = api.get(&["projects", "p"], &[]).await.unwrap();
        assert_eq!(value, json!({"ok": true}));
        assert_eq!(server.seen().len(), 5);
    }

    #[tokio::test]
    async fn retries_stop_after_the_last_attempt_with_the_error() {
        let (api, server) = api((0..4)
            .map(|_| Reply::Json(503, envelope(503, "backendError")))
            .collect())
        .await;
        let err = api.get::<Value>(&["projects", "p"], &[]).await.unwrap_err();
        assert_eq!(server.seen().len(), 4);
        assert_eq!(kind_of(&err), Some(ErrorKind::Transient));
        let text = format!("{err:#}");
        assert!(text.contains("GET http://127.0.0.1:"), "{text}");
        assert!(text.contains("backendError"), "{text}");
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        for (status, reason, kind) in [
            (404, "notFound", ErrorKind::NotFound),
            (403, "quotaExceeded", ErrorKind::Quota),
            (400, "resourceInUseByAnotherResource", ErrorKind::InUse),
            (412, "conditionNotMet", ErrorKind::Precondition),
        ] {
            let (api, server) = api(vec![Reply::Json(status, envelope(status, reason))]).await;
            let err = api
                .delete::<Value>(&["projects", "p"], &[])
                .await
                .unwrap_err();
            assert_eq!(kind_of(&err), Some(kind), "{reason}");
            assert_eq!(server.seen().len(), 1, "{reason} was retried");
        }
    }

    #[tokio::test]
    async fn bodies_and_queries_are_sent_and_no_token_goes_to_http() {
        let (auth, asked) = crate::auth::tests::fixed_token();
        let server = TestServer::start(vec![Reply::Json(200, json!({"name": "op"}))]).await;
        let api = Api::new(&format!("{}/compute/v1", server.origin), auth).unwrap();
        let _: Value = api
            .post(
                &["projects", "p", "zones", "z", "disks"],
                &[("requestId", "r-1".into())],
                &json!({"name": "d"}),
            )
            .await
            .unwrap();
        let seen = &server.seen()[0];
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path(), "/compute/v1/projects/p/zones/z/disks");
        assert_eq!(seen.query("requestId").as_deref(), Some("r-1"));
        assert_eq!(seen.body, Some(json!({"name": "d"})));
        assert_eq!(seen.authorization, None);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_answer_that_is_not_the_expected_json_is_an_error() {
        let (api, _server) = api(vec![Reply::Json(200, json!([1, 2]))]).await;
        let err = api
            .get::<crate::compute::model::Disk>(&["x"], &[])
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("unexpected answer"), "{err:#}");
    }
}
