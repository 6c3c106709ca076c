//! A per-VM stand-in for GCE's metadata server, on 127.0.0.1 only.
//!
//! It answers like GCE for what the build VM reads: instance attributes (which
//! `set_metadata` changes live), the instance's name, hostname and id, and the project
//! id. There are no credentials locally, so the service-account token is 404.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
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
    let recursive = query.split('&').any(|q| q == "recursive=true");
    let attributes = lock(&instance.attributes);
    let found = match path {
        "/computeMetadata/v1/instance/attributes/" if recursive => {
            Some(serde_json::to_string(&*attributes).unwrap_or_default())
        }
        "/computeMetadata/v1/instance/attributes/" => Some(
            attributes
                .keys()
                .map(|k| format!("{k}\n"))
                .collect::<String>(),
        ),
        "/computeMetadata/v1/instance/name" => Some(instance.name.clone()),
        "/computeMetadata/v1/instance/hostname" => {
            Some(format!("{}.c.{PROJECT_ID}.internal", instance.name))
        }
        "/computeMetadata/v1/instance/id" => Some(instance.id.to_string()),
        "/computeMetadata/v1/project/project-id" => Some(PROJECT_ID.to_string()),
        _ => path
            .strip_prefix("/computeMetadata/v1/instance/attributes/")
            .and_then(|key| attributes.get(key).cloned()),
    };
    match found {
        Some(body) => (200, body),
        None => (404, "Not Found\n".into()),
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
    async fn stops_when_dropped() {
        let s = MetadataServer::start("vm", BTreeMap::new()).await.unwrap();
        let addr = s.addr();
        drop(s);
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
