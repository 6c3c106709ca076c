//! A per-VM stand-in for GCE's metadata server, on 127.0.0.1 only.
//!
//! It answers like GCE for what the build VM reads: instance attributes (which
//! `set_metadata` changes live), the instance's name, hostname and id, and the project
//! id. There are no credentials locally, so the service-account token is 404. As GCE's, it
//! answers 403 to a request without `Metadata-Flavor: Google` and marks every answer with
//! it; core's `http_server` serves one request per connection and refuses heads over 16 KiB.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use cos_customizer_core::http_server::{self, Body, Bytes, Request, Response, Server};
use serde_json::{json, Value};

/// The project id local builds report.
pub const PROJECT_ID: &str = "local";

/// What the server answers; shared with the connection tasks.
#[derive(Debug)]
struct Instance {
    name: String,
    id: u64,
    attributes: Mutex<BTreeMap<String, String>>,
}

/// A running server; dropping it stops it.
pub struct MetadataServer {
    server: Server,
    instance: Arc<Instance>,
}

impl MetadataServer {
    /// Starts serving `attributes` for the instance `name`.
    pub async fn start(name: &str, attributes: BTreeMap<String, String>) -> Result<Self> {
        let instance = Arc::new(Instance {
            name: name.to_string(),
            id: instance_id(name),
            attributes: Mutex::new(attributes),
        });
        let shared = instance.clone();
        let server = Server::start(SocketAddr::from(([127, 0, 0, 1], 0)), move |req| {
            let reply = serve(&req, &shared);
            async move { Some(reply) }
        })
        .await
        .context("starting the metadata server")?;
        Ok(MetadataServer { server, instance })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Sets one attribute; later requests see it.
    pub fn set(&self, key: &str, value: &str) {
        lock(&self.instance.attributes).insert(key.to_string(), value.to_string());
    }

    /// The attribute `key`, as the guest would read it now.
    #[cfg(test)]
    pub fn attribute(&self, key: &str) -> Option<String> {
        lock(&self.instance.attributes).get(key).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicked holder cannot leave a map half-written; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stable numeric id, as GCE gives every instance one (FNV-1a of the name).
fn instance_id(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// GCE's answer to one request, with its `Metadata-Flavor: Google`.
fn serve(req: &Request<Bytes>, instance: &Instance) -> Response<Body> {
    let (status, body) = answer(req, instance);
    http_server::answer(
        status,
        &[
            ("metadata-flavor", "Google"),
            ("content-type", "application/text"),
        ],
        body,
    )
}

/// The zone local builds report, as GCE writes it (`projects/<number>/zones/<zone>`).
pub const ZONE: &str = "projects/0/zones/local";

/// The whole metadata tree as GCE's `?recursive=true` shows it: the instance's live
/// attributes and the keys a booting COS reads (cloud-init's GCE datasource: `instance/id`,
/// `instance/zone`, `instance/hostname`, `instance/attributes/`, `project/attributes/`).
fn tree(instance: &Instance) -> Value {
    let attributes = lock(&instance.attributes).clone();
    json!({
        "instance": {
            "attributes": attributes,
            "hostname": format!("{}.c.{PROJECT_ID}.internal", instance.name),
            "id": instance.id,
            "name": instance.name,
            "zone": ZONE,
        },
        "project": {
            "attributes": {},
            "numericProjectId": 0,
            "projectId": PROJECT_ID,
        },
    })
}

/// GCE's paths are kebab-case where its JSON is camelCase (`project-id`, `projectId`).
fn json_key(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    let mut upper = false;
    for c in segment.chars() {
        if c == '-' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A directory as GCE lists it without `recursive`: one key a line, `/` after directories.
fn listing(dir: &serde_json::Map<String, Value>, kebab: bool) -> String {
    dir.iter()
        .map(|(k, v)| {
            let name = if kebab { kebab_case(k) } else { k.clone() };
            let slash = if v.is_object() { "/" } else { "" };
            format!("{name}{slash}\n")
        })
        .collect()
}

fn kebab_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Status and body for one request.
fn answer(req: &Request<Bytes>, instance: &Instance) -> (u16, String) {
    let flavored = req
        .headers()
        .get_all("metadata-flavor")
        .iter()
        .any(|v| v == "Google");
    if !flavored {
        return (403, "Missing Metadata-Flavor:Google header.\n".into());
    }
    if req.method() != http_server::Method::GET {
        return (405, "Method not allowed.\n".into());
    }
    let (path, query) = (req.uri().path(), req.uri().query().unwrap_or_default());
    let param = |name: &str| {
        query.split('&').find_map(|q| {
            q.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        })
    };
    // cloud-init asks `?recursive=True`; GCE takes any case.
    let recursive = param("recursive").as_deref() == Some("true");
    let json = recursive || param("alt").as_deref() == Some("json");
    let Some(rest) = path.strip_prefix("/computeMetadata/v1/") else {
        return (404, "Not Found\n".into());
    };
    let is_dir = rest.is_empty() || rest.ends_with('/');
    let mut node = tree(instance);
    // Inside `attributes` keys are the user's, taken as they are.
    let mut in_attributes = false;
    for segment in rest.split('/').filter(|s| !s.is_empty()) {
        let key = if in_attributes {
            segment.to_string()
        } else {
            json_key(segment)
        };
        in_attributes = segment == "attributes" && !in_attributes;
        match node.get_mut(&key).map(Value::take) {
            Some(child) => node = child,
            None => return (404, "Not Found\n".into()),
        }
    }
    match (&node, json) {
        (_, true) => (200, node.to_string()),
        (Value::Object(dir), false) if is_dir => (200, listing(dir, !in_attributes)),
        // GCE redirects a directory without its slash; answering 404 is what a client
        // that did not follow the redirect would see.
        (Value::Object(_), false) => (404, "Not Found\n".into()),
        (Value::String(text), false) => (200, text.clone()),
        (other, false) => (200, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// One HTTP/1.1 GET over real TCP; the raw response.
    async fn get(addr: SocketAddr, path: &str, flavor: bool) -> String {
        send(addr, "GET", path, flavor).await
    }

    /// One HTTP/1.1 request with no body over real TCP; the raw response.
    async fn send(addr: SocketAddr, method: &str, path: &str, flavor: bool) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let header = if flavor {
            "Metadata-Flavor: Google\r\n"
        } else {
            ""
        };
        let req =
            format!("{method} {path} HTTP/1.1\r\nHost: metadata.google.internal\r\n{header}\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        out
    }

    fn body(resp: &str) -> &str {
        resp.split_once("\r\n\r\n").unwrap().1
    }

    #[tokio::test]
    async fn answers_like_gce() {
        let attrs = BTreeMap::from([("user-data".to_string(), "#cloud-config\n".to_string())]);
        let s = MetadataServer::start("preload-vm", attrs).await.unwrap();
        assert!(s.addr().ip().is_loopback());
        let base = "/computeMetadata/v1";

        let r = get(
            s.addr(),
            &format!("{base}/instance/attributes/user-data"),
            false,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 403 "), "{r}");

        let r = get(
            s.addr(),
            &format!("{base}/instance/attributes/user-data"),
            true,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("\r\nMetadata-Flavor: Google\r\n"), "{r}");
        assert_eq!(body(&r), "#cloud-config\n");

        let r = get(
            s.addr(),
            &format!("{base}/instance/attributes/DaisyEnd"),
            true,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
        s.set("DaisyEnd", "ack");
        let r = get(
            s.addr(),
            &format!("{base}/instance/attributes/DaisyEnd?alt=text"),
            true,
        )
        .await;
        assert_eq!(body(&r), "ack");

        let r = get(s.addr(), &format!("{base}/instance/attributes/"), true).await;
        assert_eq!(body(&r), "DaisyEnd\nuser-data\n");
        let r = get(
            s.addr(),
            &format!("{base}/instance/attributes/?recursive=true"),
            true,
        )
        .await;
        assert_eq!(
            body(&r),
            r##"{"DaisyEnd":"ack","user-data":"#cloud-config\n"}"##
        );

        assert_eq!(
            body(&get(s.addr(), &format!("{base}/instance/name"), true).await),
            "preload-vm"
        );
        assert_eq!(
            body(&get(s.addr(), &format!("{base}/instance/hostname"), true).await),
            "preload-vm.c.local.internal"
        );
        let id = get(s.addr(), &format!("{base}/instance/id"), true).await;
        assert!(body(&id).parse::<u64>().is_ok(), "{id}");
        assert_eq!(
            body(&get(s.addr(), &format!("{base}/project/project-id"), true).await),
            "local"
        );
        let r = get(
            s.addr(),
            &format!("{base}/instance/service-accounts/default/token"),
            true,
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");
    }

    #[tokio::test]
    async fn answers_what_cloud_inits_gce_datasource_reads() {
        let attrs = BTreeMap::from([
            ("user-data".to_string(), "#cloud-config\n".to_string()),
            ("block-project-ssh-keys".to_string(), "TRUE".to_string()),
        ]);
        let s = MetadataServer::start("preload-vm", attrs).await.unwrap();
        let v1 = "/computeMetadata/v1";
        let get_ok = |path: String| {
            let addr = s.addr();
            async move {
                let r = get(addr, &path, true).await;
                assert!(r.starts_with("HTTP/1.1 200 "), "{path}: {r}");
                body(&r).to_string()
            }
        };
        assert_eq!(
            get_ok(format!("{v1}/instance/zone")).await,
            "projects/0/zones/local"
        );
        let data: Value = serde_json::from_str(
            &get_ok(format!("{v1}/instance/attributes/?recursive=True")).await,
        )
        .unwrap();
        assert_eq!(data["user-data"], "#cloud-config\n");
        assert_eq!(data["block-project-ssh-keys"], "TRUE");
        assert_eq!(
            get_ok(format!("{v1}/project/attributes/?recursive=True")).await,
            "{}"
        );
        assert_eq!(
            get_ok(format!("{v1}/instance/name?alt=json")).await,
            "\"preload-vm\""
        );
        assert_eq!(
            get_ok(format!("{v1}/instance/")).await,
            "attributes/\nhostname\nid\nname\nzone\n"
        );
        assert_eq!(
            get_ok(format!("{v1}/project/")).await,
            "attributes/\nnumeric-project-id\nproject-id\n"
        );
        let all: Value =
            serde_json::from_str(&get_ok(format!("{v1}/?recursive=true")).await).unwrap();
        assert_eq!(all["project"]["projectId"], "local");
        assert!(all["instance"]["id"].is_u64(), "{all}");
        for missing in [
            "/computeMetadata/v1/instance/attributes/nope",
            "/computeMetadata/v1/instance/nope",
            "/computeMetadata/v1/instance",
            "/computeMetadata/v2/instance/name",
            "/",
        ] {
            let r = get(s.addr(), missing, true).await;
            assert!(r.starts_with("HTTP/1.1 404 "), "{missing}: {r}");
        }
    }

    #[tokio::test]
    async fn refuses_other_methods_and_oversized_heads() {
        let s = MetadataServer::start("vm", BTreeMap::new()).await.unwrap();
        let name = "/computeMetadata/v1/instance/name";
        let r = send(s.addr(), "POST", name, true).await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        let padded = format!("{name}?pad={}", "a".repeat(http_server::MAX_HEAD));
        let r = get(s.addr(), &padded, true).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    }

    #[tokio::test]
    async fn stops_when_dropped() {
        let s = MetadataServer::start("vm", BTreeMap::new()).await.unwrap();
        let addr = s.addr();
        drop(s);
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
