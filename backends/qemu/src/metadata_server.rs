//! A per-VM stand-in for GCE's metadata server, on 127.0.0.1 only.
//!
//! It answers like GCE for what the build VM reads: instance attributes (which
//! `set_metadata` changes live), the instance's name, hostname and id, and the project
//! id. There are no credentials locally, so the service-account token is 404.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The project id local builds report.
pub const PROJECT_ID: &str = "local";
/// Requests larger than this are refused; GCE clients send a few hundred bytes.
const MAX_REQUEST: usize = 16 * 1024;

/// What the server answers; shared with the connection tasks.
#[derive(Debug)]
struct Instance {
    name: String,
    id: u64,
    attributes: Mutex<BTreeMap<String, String>>,
}

/// A running server; dropping it stops it.
pub struct MetadataServer {
    addr: SocketAddr,
    instance: Arc<Instance>,
    task: JoinHandle<()>,
}

impl MetadataServer {
    /// Starts serving `attributes` for the instance `name`.
    pub async fn start(name: &str, attributes: BTreeMap<String, String>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the metadata server to 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("reading the metadata server's address")?;
        let instance = Arc::new(Instance {
            name: name.to_string(),
            id: instance_id(name),
            attributes: Mutex::new(attributes),
        });
        let shared = instance.clone();
        let task = tokio::spawn(async move {
            loop {
                let conn = match listener.accept().await {
                    Ok((conn, _)) => conn,
                    Err(_) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let instance = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, &instance).await {
                        eprintln!("metadata server for {}: {e:#}", instance.name);
                    }
                });
            }
        });
        Ok(MetadataServer {
            addr,
            instance,
            task,
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.task.abort();
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

async fn serve(mut conn: TcpStream, instance: &Instance) -> Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            return respond(&mut conn, 431, "request too large\n").await;
        }
        let n = conn
            .read(&mut chunk)
            .await
            .context("reading a metadata request")?;
        if n == 0 {
            // The client went away before a whole request.
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let (status, body) = answer(&head, instance);
    respond(&mut conn, status, &body).await
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

/// Status and body for one request head (request line plus headers).
fn answer(head: &str, instance: &Instance) -> (u16, String) {
    let mut lines = head.split("\r\n");
    let mut request = lines.next().unwrap_or_default().split_whitespace();
    let (method, target) = (
        request.next().unwrap_or_default(),
        request.next().unwrap_or_default(),
    );
    let flavored = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("metadata-flavor") && v.trim() == "Google"
        })
    });
    if !flavored {
        return (403, "Missing Metadata-Flavor:Google header.\n".into());
    }
    if method != "GET" {
        return (405, "Method not allowed.\n".into());
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
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

async fn respond(conn: &mut TcpStream, status: u16, body: &str) -> Result<()> {
    let reason = match status {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nMetadata-Flavor: Google\r\nContent-Type: application/text\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes())
        .await
        .context("writing a metadata response")?;
    conn.shutdown()
        .await
        .context("closing a metadata connection")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One HTTP/1.1 request over real TCP; the raw response.
    async fn get(addr: SocketAddr, path: &str, flavor: bool) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let header = if flavor {
            "Metadata-Flavor: Google\r\n"
        } else {
            ""
        };
        let req = format!("GET {path} HTTP/1.1\r\nHost: metadata.google.internal\r\n{header}\r\n");
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
    async fn stops_when_dropped() {
        let s = MetadataServer::start("vm", BTreeMap::new()).await.unwrap();
        let addr = s.addr();
        drop(s);
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
