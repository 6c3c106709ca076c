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
pub use crate::retry::RetryPolicy;
use crate::retry::{Failure, CONNECT_TIMEOUT};

/// Compute's public base path, upstream's `-compute-endpoint` default.
pub const DEFAULT_COMPUTE_BASE: &str = "https://compute.googleapis.com/compute/v1/";

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
        // Each attempt's deadline comes from the retry policy.
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
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

    /// The base path, as given.
    pub fn base(&self) -> &Url {
        &self.base
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

    /// `POST` to a method the server may hold open until its own deadline (an operation's
    /// `/wait`, about 2 minutes on GCE), so an attempt may last `hold`.
    pub async fn post_long_poll<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        hold: Duration,
    ) -> Result<T> {
        let policy = self.retry.long_poll(hold);
        self.send_with(&policy, Method::POST, segments, &[], Some(&()))
            .await
    }

    async fn send<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T> {
        self.send_with(&self.retry, method, segments, query, body)
            .await
    }

    /// Sends one call under `policy` and reads its JSON answer. A GCE error comes back as an
    /// [`ApiError`] under a context naming the method and URL.
    async fn send_with<T: DeserializeOwned, B: Serialize>(
        &self,
        policy: &RetryPolicy,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let what = format!("{method} {url}");
        let text = policy
            .run(|_| self.attempt(method.clone(), &url, body))
            .await
            .map_err(|f| f.error.context(what.clone()))?;
        serde_json::from_str(&text).with_context(|| {
            let start: String = text.chars().take(200).collect();
            format!("{what}: unexpected answer {start:?} (is the endpoint the Compute API?)")
        })
    }

    /// One try of a call: the answer's text on success.
    async fn attempt<B: Serialize>(
        &self,
        method: Method,
        url: &Url,
        body: Option<&B>,
    ) -> Result<String, Failure> {
        let headers = self.auth.headers(url).await.map_err(Failure::fatal)?;
        let mut request = self.client.request(method, url.clone()).headers(headers);
        if let Some(body) = body {
            request = request.json(body);
        }
        // Never answered (reset, closed, timed out): safe to resend, since mutations carry a
        // requestId.
        let unanswered = |e: reqwest::Error| Failure {
            retryable: !e.is_builder(),
            error: anyhow::Error::new(e),
        };
        let response = request.send().await.map_err(unanswered)?;
        let status = response.status();
        let text = response.text().await.map_err(unanswered)?;
        if status.is_success() {
            return Ok(text);
        }
        let err = ApiError::from_compute_response(status.as_u16(), &text);
        Err(Failure {
            retryable: err.is_retryable(),
            error: anyhow::Error::new(err),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::error::{kind_of, ErrorKind};
    use cos_customizer_testkit::testserver::{Reply, TestServer};

    async fn api(replies: Vec<Reply>) -> (Api, TestServer) {
        let server = TestServer::start(replies).await;
        let api = Api::new(&format!("{}/compute/v1/", server.origin), Auth::None)
            .unwrap()
            .with_retry(RetryPolicy::quick());
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
            ..RetryPolicy::quick()
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
