//! Credentials for the Compute and Storage calls: Application Default Credentials through
//! `google-cloud-auth` (the metadata server on Cloud Build and GCE, `GOOGLE_APPLICATION_CREDENTIALS`,
//! `gcloud auth application-default login` user credentials, impersonated and workload identity
//! ADC files), optionally impersonating a service account, or none at all.
//!
//! The one rule: a token goes only to an `https://` endpoint. A plain `http://` endpoint is an
//! emulator on loopback, and gets no `Authorization` header whatever the credentials, so a
//! developer's real token never reaches a test server (and tests need no credentials).

use anyhow::{bail, Context, Result};
use google_cloud_auth::credentials::{self, impersonated, CacheableResource, Credentials};
use reqwest::header::HeaderMap;
use reqwest::Url;

/// The OAuth scope the calls need: Compute and Storage both accept `cloud-platform`.
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Where the request headers that prove who is calling come from.
#[derive(Clone, Debug)]
pub enum Auth {
    /// Google credentials, sent to `https://` endpoints only.
    Google(Credentials),
    /// No credentials: for emulators, and for public data such as the GPU driver bucket.
    None,
}

impl Auth {
    /// Application Default Credentials with the `cloud-platform` scope, or, given
    /// `impersonate` (a service account's e-mail), a token of that account obtained with them.
    /// Nothing is fetched yet: a missing credential shows at the first `https://` call. Call it
    /// inside a Tokio runtime: the credentials start their token refresher there.
    pub fn application_default(impersonate: Option<&str>) -> Result<Auth> {
        let adc = credentials::Builder::default()
            .with_scopes([CLOUD_PLATFORM_SCOPE])
            .build()
            .context(
                "loading Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, \
                 `gcloud auth application-default login`, or the metadata server)",
            )?;
        let Some(account) = impersonate else {
            return Ok(Auth::Google(adc));
        };
        let credentials = impersonated::Builder::from_source_credentials(adc)
            .with_target_principal(account)
            .with_scopes([CLOUD_PLATFORM_SCOPE])
            .build()
            .with_context(|| format!("impersonating service account {account}"))?;
        Ok(Auth::Google(credentials))
    }

    /// Whether a request to `url` may carry credentials: only over `https`.
    pub fn sends_credentials_to(url: &Url) -> bool {
        url.scheme() == "https"
    }

    /// The headers that authenticate a request to `url`: empty for `Auth::None` and for any
    /// endpoint that is not `https://`.
    pub async fn headers(&self, url: &Url) -> Result<HeaderMap> {
        let Auth::Google(credentials) = self else {
            return Ok(HeaderMap::new());
        };
        if !Self::sends_credentials_to(url) {
            return Ok(HeaderMap::new());
        }
        // Without an entity tag the crate always answers `New`; it caches and refreshes the
        // token itself.
        match credentials
            .headers(Default::default())
            .await
            .context("getting an access token from the Application Default Credentials")?
        {
            CacheableResource::New { data, .. } => Ok(data),
            CacheableResource::NotModified => {
                bail!("the credentials answered 'not modified' to a request without a tag")
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use google_cloud_auth::credentials::{CredentialsProvider, EntityTag};
    use reqwest::header::{HeaderValue, AUTHORIZATION};

    use super::*;

    /// Credentials that hand out a fixed bearer token and count how often they were asked.
    #[derive(Debug, Default)]
    pub(crate) struct FixedToken {
        pub(crate) asked: Arc<AtomicUsize>,
    }

    impl CredentialsProvider for FixedToken {
        async fn headers(
            &self,
            _: http::Extensions,
        ) -> Result<CacheableResource<HeaderMap>, google_cloud_auth::errors::CredentialsError>
        {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let mut data = HeaderMap::new();
            data.insert(
                AUTHORIZATION,
                HeaderValue::from_static("Bearer secret-token"),
            );
            Ok(CacheableResource::New {
                entity_tag: EntityTag::new(),
                data,
            })
        }

        async fn universe_domain(&self) -> Option<String> {
            None
        }
    }

    /// Google credentials backed by [`FixedToken`], and its counter.
    pub(crate) fn fixed_token() -> (Auth, Arc<AtomicUsize>) {
        let provider = FixedToken::default();
        let asked = provider.asked.clone();
        (Auth::Google(Credentials::from(provider)), asked)
    }

    #[tokio::test]
    async fn tokens_go_to_https_only() {
        let (auth, asked) = fixed_token();
        let emulator = Url::parse("http://127.0.0.1:8080/compute/v1/projects/p").unwrap();
        assert!(auth.headers(&emulator).await.unwrap().is_empty());
        assert_eq!(
            asked.load(Ordering::SeqCst),
            0,
            "the token was fetched for http"
        );

        let google = Url::parse("https://compute.googleapis.com/compute/v1/projects/p").unwrap();
        let headers = auth.headers(&google).await.unwrap();
        assert_eq!(headers[AUTHORIZATION], "Bearer secret-token");
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn no_credentials_send_nothing() {
        let google = Url::parse("https://storage.googleapis.com/storage/v1/b").unwrap();
        assert!(Auth::None.headers(&google).await.unwrap().is_empty());
    }

    // The only test that touches GOOGLE_APPLICATION_CREDENTIALS, so no other test sees it.
    #[tokio::test]
    async fn adc_files_are_read_and_impersonation_is_built_on_them() {
        let dir = std::env::temp_dir().join(format!("gce-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let user = dir.join("user.json");
        std::fs::write(
            &user,
            r#"{"type":"authorized_user","client_id":"c.apps.googleusercontent.com",
                "client_secret":"s","refresh_token":"r"}"#,
        )
        .unwrap();
        let broken = dir.join("broken.json");
        std::fs::write(&broken, r#"{"type":"no_such_type"}"#).unwrap();

        std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &user);
        let plain = Auth::application_default(None);
        let impersonated = Auth::application_default(Some("builder@p.iam.gserviceaccount.com"));
        std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &broken);
        let bad = Auth::application_default(None);
        std::env::remove_var("GOOGLE_APPLICATION_CREDENTIALS");
        std::fs::remove_dir_all(&dir).unwrap();

        assert!(matches!(plain.unwrap(), Auth::Google(_)));
        assert!(matches!(impersonated.unwrap(), Auth::Google(_)));
        let err = format!("{:#}", bad.unwrap_err());
        assert!(err.contains("Application Default Credentials"), "{err}");
    }
}
