//! The Compute Engine calls the preload flow makes (the GCE design brief's §3.1), one function
//! each, over [`Api`]. Every path comes from [`CALLS`], which a test checks against Google's
//! discovery document, and every mutation whose method takes a `requestId` gets a fresh one,
//! kept across its retries.

pub mod body;
pub mod in_use;
pub mod model;
pub mod op;

use std::time::Duration;

use anyhow::Result;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::http::{request_id, Api};
use model::{Disk, Image, Instance, Metadata, Operation, Page, SerialPortOutput};

/// One Compute method: its discovery id, HTTP method, path template (relative to the base
/// path) and the query parameters this crate sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Call {
    /// The method's id in the discovery document, such as `compute.disks.insert`.
    pub id: &'static str,
    /// `GET`, `POST` or `DELETE`.
    pub method: &'static str,
    /// The path template, such as `projects/{project}/zones/{zone}/disks`.
    pub path: &'static str,
    /// The query parameters sent, `requestId` among them for mutations.
    pub query: &'static [&'static str],
}

macro_rules! calls {
    ($($name:ident = $id:literal $method:literal $path:literal [$($q:literal),*];)*) => {
        $(
            #[doc = concat!("`", $id, "`: ", $method, " ", $path)]
            pub const $name: Call = Call { id: $id, method: $method, path: $path, query: &[$($q),*] };
        )*
        /// Every Compute method this crate calls.
        pub const CALLS: &[Call] = &[$($name),*];
    };
}

calls! {
    DISKS_INSERT = "compute.disks.insert" "POST" "projects/{project}/zones/{zone}/disks" ["requestId"];
    DISKS_GET = "compute.disks.get" "GET" "projects/{project}/zones/{zone}/disks/{disk}" [];
    DISKS_LIST = "compute.disks.list" "GET" "projects/{project}/zones/{zone}/disks" ["filter", "pageToken"];
    DISKS_RESIZE = "compute.disks.resize" "POST" "projects/{project}/zones/{zone}/disks/{disk}/resize" ["requestId"];
    DISKS_DELETE = "compute.disks.delete" "DELETE" "projects/{project}/zones/{zone}/disks/{disk}" ["requestId"];
    INSTANCES_INSERT = "compute.instances.insert" "POST" "projects/{project}/zones/{zone}/instances" ["requestId"];
    INSTANCES_GET = "compute.instances.get" "GET" "projects/{project}/zones/{zone}/instances/{instance}" [];
    INSTANCES_LIST = "compute.instances.list" "GET" "projects/{project}/zones/{zone}/instances" ["filter", "pageToken"];
    INSTANCES_DELETE = "compute.instances.delete" "DELETE" "projects/{project}/zones/{zone}/instances/{instance}" ["requestId"];
    INSTANCES_SERIAL_PORT = "compute.instances.getSerialPortOutput" "GET" "projects/{project}/zones/{zone}/instances/{instance}/serialPort" ["port", "start"];
    INSTANCES_SET_METADATA = "compute.instances.setMetadata" "POST" "projects/{project}/zones/{zone}/instances/{instance}/setMetadata" ["requestId"];
    IMAGES_INSERT = "compute.images.insert" "POST" "projects/{project}/global/images" ["requestId"];
    IMAGES_GET = "compute.images.get" "GET" "projects/{project}/global/images/{image}" [];
    IMAGES_LIST = "compute.images.list" "GET" "projects/{project}/global/images" ["filter", "pageToken"];
    IMAGES_GET_FROM_FAMILY = "compute.images.getFromFamily" "GET" "projects/{project}/global/images/family/{family}" [];
    IMAGES_DEPRECATE = "compute.images.deprecate" "POST" "projects/{project}/global/images/{image}/deprecate" ["requestId"];
    IMAGES_DELETE = "compute.images.delete" "DELETE" "projects/{project}/global/images/{image}" ["requestId"];
    ZONE_OPERATIONS_GET = "compute.zoneOperations.get" "GET" "projects/{project}/zones/{zone}/operations/{operation}" [];
    ZONE_OPERATIONS_WAIT = "compute.zoneOperations.wait" "POST" "projects/{project}/zones/{zone}/operations/{operation}/wait" [];
    GLOBAL_OPERATIONS_GET = "compute.globalOperations.get" "GET" "projects/{project}/global/operations/{operation}" [];
    GLOBAL_OPERATIONS_WAIT = "compute.globalOperations.wait" "POST" "projects/{project}/global/operations/{operation}/wait" [];
}

impl Call {
    /// The path's segments with each `{placeholder}` replaced by the next of `args`.
    pub fn segments<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut args = args.iter();
        let segments: Vec<&str> = self
            .path
            .split('/')
            .map(|s| {
                if s.starts_with('{') {
                    args.next()
                        .copied()
                        .unwrap_or_else(|| panic!("{}: too few arguments", self.id))
                } else {
                    s
                }
            })
            .collect();
        assert!(args.next().is_none(), "{}: too many arguments", self.id);
        segments
    }
}

/// The Compute Engine API at a base path.
#[derive(Clone, Debug)]
pub struct Compute {
    api: Api,
    poll_interval: Duration,
}

impl Compute {
    /// Compute over `api`, polling operations every 2 seconds when `/wait` is not served.
    pub fn new(api: Api) -> Compute {
        Compute {
            api,
            poll_interval: Duration::from_secs(2),
        }
    }

    /// The API's base path, for messages.
    pub fn base(&self) -> &str {
        self.api.base().as_str()
    }

    /// The same, polling operations every `interval` instead.
    pub fn with_poll_interval(mut self, interval: Duration) -> Compute {
        self.poll_interval = interval;
        self
    }

    /// Sends `call` with `args` in its path, `query` and, for a POST, `body`. A mutation whose
    /// method takes one gets a `requestId`.
    async fn call<T: DeserializeOwned>(
        &self,
        call: &Call,
        args: &[&str],
        mut query: Vec<(&str, String)>,
        body: Option<&Value>,
    ) -> Result<T> {
        debug_assert!(
            query.iter().all(|(k, _)| call.query.contains(k)),
            "{}",
            call.id
        );
        if call.query.contains(&"requestId") {
            query.push(("requestId", request_id()));
        }
        let segments = call.segments(args);
        match call.method {
            "GET" => self.api.get(&segments, &query).await,
            "DELETE" => self.api.delete(&segments, &query).await,
            _ => {
                self.api
                    .post(&segments, &query, &body.unwrap_or(&Value::Null))
                    .await
            }
        }
    }

    /// Every item of a list call, following `nextPageToken`.
    async fn list_all<T: DeserializeOwned>(
        &self,
        call: &Call,
        args: &[&str],
        filter: Option<&str>,
    ) -> Result<Vec<T>> {
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = Vec::new();
            if let Some(filter) = filter {
                query.push(("filter", filter.to_string()));
            }
            if let Some(token) = token.take() {
                query.push(("pageToken", token));
            }
            let page: Page<T> = self.call(call, args, query, None).await?;
            items.extend(page.items);
            match page.next_page_token {
                Some(next) if !next.is_empty() => token = Some(next),
                _ => return Ok(items),
            }
        }
    }

    /// `disks.insert` with a body from [`body::disk`].
    pub async fn disks_insert(&self, project: &str, zone: &str, disk: &Value) -> Result<Operation> {
        self.call(&DISKS_INSERT, &[project, zone], vec![], Some(disk))
            .await
    }

    /// `disks.get`.
    pub async fn disks_get(&self, project: &str, zone: &str, disk: &str) -> Result<Disk> {
        self.call(&DISKS_GET, &[project, zone, disk], vec![], None)
            .await
    }

    /// `disks.list`, every page, optionally filtered.
    pub async fn disks_list(
        &self,
        project: &str,
        zone: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Disk>> {
        self.list_all(&DISKS_LIST, &[project, zone], filter).await
    }

    /// `disks.resize` to `size_gb`.
    pub async fn disks_resize(
        &self,
        project: &str,
        zone: &str,
        disk: &str,
        size_gb: i64,
    ) -> Result<Operation> {
        let body = body::resize(size_gb);
        self.call(&DISKS_RESIZE, &[project, zone, disk], vec![], Some(&body))
            .await
    }

    /// `disks.delete`.
    pub async fn disks_delete(&self, project: &str, zone: &str, disk: &str) -> Result<Operation> {
        self.call(&DISKS_DELETE, &[project, zone, disk], vec![], None)
            .await
    }

    /// `instances.insert` with a body from [`body::instance`].
    pub async fn instances_insert(
        &self,
        project: &str,
        zone: &str,
        instance: &Value,
    ) -> Result<Operation> {
        self.call(&INSTANCES_INSERT, &[project, zone], vec![], Some(instance))
            .await
    }

    /// `instances.get`.
    pub async fn instances_get(
        &self,
        project: &str,
        zone: &str,
        instance: &str,
    ) -> Result<Instance> {
        self.call(&INSTANCES_GET, &[project, zone, instance], vec![], None)
            .await
    }

    /// `instances.list`, every page, optionally filtered (such as `labels.cos-customizer-cleanup:*`).
    pub async fn instances_list(
        &self,
        project: &str,
        zone: &str,
        filter: Option<&str>,
    ) -> Result<Vec<Instance>> {
        self.list_all(&INSTANCES_LIST, &[project, zone], filter)
            .await
    }

    /// `instances.delete`.
    pub async fn instances_delete(
        &self,
        project: &str,
        zone: &str,
        instance: &str,
    ) -> Result<Operation> {
        self.call(&INSTANCES_DELETE, &[project, zone, instance], vec![], None)
            .await
    }

    /// `instances.getSerialPortOutput` of `port` (1-4) from byte `start`.
    pub async fn instances_serial_port(
        &self,
        project: &str,
        zone: &str,
        instance: &str,
        port: u8,
        start: i64,
    ) -> Result<SerialPortOutput> {
        let query = vec![("port", port.to_string()), ("start", start.to_string())];
        self.call(
            &INSTANCES_SERIAL_PORT,
            &[project, zone, instance],
            query,
            None,
        )
        .await
    }

    /// `instances.setMetadata`: replaces every item, so `metadata` must be the merged whole with
    /// the fingerprint it was read with ([`body::merge_metadata`]).
    pub async fn instances_set_metadata(
        &self,
        project: &str,
        zone: &str,
        instance: &str,
        metadata: &Metadata,
    ) -> Result<Operation> {
        let body = serde_json::to_value(metadata)?;
        self.call(
            &INSTANCES_SET_METADATA,
            &[project, zone, instance],
            vec![],
            Some(&body),
        )
        .await
    }

    /// `images.insert` with a body from [`body::image`] or [`body::raw_image`].
    pub async fn images_insert(&self, project: &str, image: &Value) -> Result<Operation> {
        self.call(&IMAGES_INSERT, &[project], vec![], Some(image))
            .await
    }

    /// `images.get`.
    pub async fn images_get(&self, project: &str, image: &str) -> Result<Image> {
        self.call(&IMAGES_GET, &[project, image], vec![], None)
            .await
    }

    /// `images.list`, every page, optionally filtered (such as `(family = F) (name != N)`).
    pub async fn images_list(&self, project: &str, filter: Option<&str>) -> Result<Vec<Image>> {
        self.list_all(&IMAGES_LIST, &[project], filter).await
    }

    /// `images.getFromFamily`: the newest image of `family` that is not deprecated.
    pub async fn images_get_from_family(&self, project: &str, family: &str) -> Result<Image> {
        self.call(&IMAGES_GET_FROM_FAMILY, &[project, family], vec![], None)
            .await
    }

    /// `images.deprecate` with a body from [`body::deprecate`].
    pub async fn images_deprecate(
        &self,
        project: &str,
        image: &str,
        status: &Value,
    ) -> Result<Operation> {
        self.call(&IMAGES_DEPRECATE, &[project, image], vec![], Some(status))
            .await
    }

    /// `images.delete`.
    pub async fn images_delete(&self, project: &str, image: &str) -> Result<Operation> {
        self.call(&IMAGES_DELETE, &[project, image], vec![], None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::Auth;
    use crate::http::RetryPolicy;
    use cos_customizer_testkit::testserver::{Reply, TestServer};

    pub(crate) async fn compute(replies: Vec<Reply>) -> (Compute, TestServer) {
        let server = TestServer::start(replies).await;
        let api = Api::new(&format!("{}/compute/v1/", server.origin), Auth::None)
            .unwrap()
            .with_retry(RetryPolicy {
                attempts: 3,
                ..RetryPolicy::quick()
            });
        (
            Compute::new(api).with_poll_interval(Duration::from_millis(1)),
            server,
        )
    }

    fn op(name: &str, status: &str) -> Value {
        json!({"name": name, "status": status, "zone": "https://www.googleapis.com/compute/v1/projects/p/zones/z"})
    }

    #[test]
    fn segments_fill_the_template_in_order() {
        assert_eq!(
            DISKS_RESIZE.segments(&["p", "z", "d"]),
            ["projects", "p", "zones", "z", "disks", "d", "resize"]
        );
    }

    #[test]
    #[should_panic(expected = "too few arguments")]
    fn segments_need_every_argument() {
        DISKS_GET.segments(&["p", "z"]);
    }

    #[tokio::test]
    async fn a_retried_insert_sends_the_same_request_id() {
        let (compute, server) = compute(vec![
            Reply::Reset,
            Reply::Json(503, json!({})),
            Reply::Json(200, op("op-1", "PENDING")),
        ])
        .await;
        let body = json!({"name": "d"});
        let op = compute.disks_insert("p", "z", &body).await.unwrap();
        assert_eq!(op.name, "op-1");
        let seen = server.seen();
        assert_eq!(seen.len(), 3);
        let id = seen[0].query("requestId").expect("requestId sent");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert!(seen
            .iter()
            .all(|s| s.query("requestId").as_deref() == Some(id.as_str())));
        assert!(seen.iter().all(|s| s.body == Some(body.clone())));
    }

    #[tokio::test]
    async fn separate_mutations_get_separate_request_ids() {
        let (compute, server) = compute(vec![
            Reply::Json(200, op("a", "DONE")),
            Reply::Json(200, op("b", "DONE")),
        ])
        .await;
        compute.instances_delete("p", "z", "vm").await.unwrap();
        compute.disks_delete("p", "z", "d").await.unwrap();
        let seen = server.seen();
        assert_eq!(seen[0].method, "DELETE");
        assert_eq!(
            seen[0].path(),
            "/compute/v1/projects/p/zones/z/instances/vm"
        );
        assert_ne!(seen[0].query("requestId"), seen[1].query("requestId"));
    }

    #[tokio::test]
    async fn reads_send_no_request_id() {
        let (compute, server) = compute(vec![Reply::Json(
            200,
            json!({"contents": "BuildStatus: x\n", "start": "0", "next": "15"}),
        )])
        .await;
        let out = compute
            .instances_serial_port("p", "z", "vm", 3, 0)
            .await
            .unwrap();
        assert_eq!(out.next, 15);
        let seen = &server.seen()[0];
        assert_eq!(
            seen.path(),
            "/compute/v1/projects/p/zones/z/instances/vm/serialPort"
        );
        assert_eq!(seen.query("port").as_deref(), Some("3"));
        assert_eq!(seen.query("start").as_deref(), Some("0"));
        assert_eq!(seen.query("requestId"), None);
    }

    #[tokio::test]
    async fn lists_follow_page_tokens_with_the_filter() {
        let (compute, server) = compute(vec![
            Reply::Json(
                200,
                json!({"items": [{"name": "a"}], "nextPageToken": "t2"}),
            ),
            Reply::Json(200, json!({"items": [{"name": "b"}], "nextPageToken": ""})),
        ])
        .await;
        let images = compute
            .images_list("cos-cloud", Some("(family = f) (name != n)"))
            .await
            .unwrap();
        let names: Vec<_> = images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let seen = server.seen();
        assert_eq!(seen[0].query("pageToken"), None);
        assert_eq!(seen[1].query("pageToken").as_deref(), Some("t2"));
        assert_eq!(
            seen[1].query("filter").as_deref(),
            Some("%28family+%3D+f%29+%28name+%21%3D+n%29")
        );
    }

    #[tokio::test]
    async fn every_call_goes_to_its_path() {
        let done = || Reply::Json(200, op("o", "DONE"));
        let (compute, server) = compute(vec![
            done(),
            Reply::Json(200, json!({"name": "d", "sizeGb": "10"})),
            Reply::Json(200, json!({"items": [{"name": "d", "sizeGb": "10"}]})),
            done(),
            done(),
            Reply::Json(200, json!({"name": "vm", "status": "RUNNING"})),
            Reply::Json(200, json!({})),
            done(),
            done(),
            Reply::Json(200, json!({"name": "i"})),
            Reply::Json(200, json!({"name": "i"})),
            done(),
            done(),
        ])
        .await;
        let body = json!({});
        compute.disks_insert("p", "z", &body).await.unwrap();
        compute.disks_get("p", "z", "d").await.unwrap();
        compute.disks_list("p", "z", None).await.unwrap();
        compute.disks_resize("p", "z", "d", 20).await.unwrap();
        compute.instances_insert("p", "z", &body).await.unwrap();
        compute.instances_get("p", "z", "vm").await.unwrap();
        compute.instances_list("p", "z", None).await.unwrap();
        compute
            .instances_set_metadata("p", "z", "vm", &Metadata::default())
            .await
            .unwrap();
        compute.images_insert("p", &body).await.unwrap();
        compute.images_get("p", "i").await.unwrap();
        compute.images_get_from_family("p", "f").await.unwrap();
        compute.images_deprecate("p", "i", &body).await.unwrap();
        compute.images_delete("p", "i").await.unwrap();
        let seen: Vec<String> = server
            .seen()
            .iter()
            .map(|s| {
                format!(
                    "{} {}",
                    s.method,
                    s.path().trim_start_matches("/compute/v1/")
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                "POST projects/p/zones/z/disks",
                "GET projects/p/zones/z/disks/d",
                "GET projects/p/zones/z/disks",
                "POST projects/p/zones/z/disks/d/resize",
                "POST projects/p/zones/z/instances",
                "GET projects/p/zones/z/instances/vm",
                "GET projects/p/zones/z/instances",
                "POST projects/p/zones/z/instances/vm/setMetadata",
                "POST projects/p/global/images",
                "GET projects/p/global/images/i",
                "GET projects/p/global/images/family/f",
                "POST projects/p/global/images/i/deprecate",
                "DELETE projects/p/global/images/i",
            ]
        );
        assert_eq!(server.seen()[3].body, Some(json!({"sizeGb": "20"})));
    }
}
