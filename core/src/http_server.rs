//! The one small HTTP/1.1 server, on hyper: the QEMU backend's metadata server and the test
//! servers (`tests/testkit`, the GCE emulator) all answer through it.
//!
//! One request per connection, as the metadata server's clients expect and as a scripted
//! reset needs; header names written in title case (`Metadata-Flavor`), as GCE writes them;
//! request heads over [`MAX_HEAD`] answered 431 by hyper itself.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use hyper::body::Bytes;
pub use hyper::{Method, Request, Response};

/// The body of every answer.
pub type Body = Full<Bytes>;

/// The largest request head (request line and headers) served; GCE's clients send a few
/// hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;

/// A running server; dropping it stops accepting (connections already accepted end as
/// their handler does).
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// Why a connection was closed without an answer: the handler asked for it.
#[derive(Debug)]
struct Unanswered;

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("closed without an answer")
    }
}

impl std::error::Error for Unanswered {}

impl Server {
    /// Listens on `listen` and gives every request, its body read whole, to `handler`;
    /// `None` from the handler closes the connection without an answer (a reset, as a dying
    /// proxy gives), and a handler that never ends holds the connection open.
    pub async fn start<H, F>(listen: SocketAddr, handler: H) -> Result<Server>
    where
        H: Fn(Request<Bytes>) -> F + Send + Sync + 'static,
        F: Future<Output = Option<Response<Body>>> + Send + 'static,
    {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding an HTTP server to {listen}"))?;
        let addr = listener
            .local_addr()
            .context("reading the HTTP server's address")?;
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let handler = handler.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = match body.collect().await {
                                    Ok(body) => body.to_bytes(),
                                    Err(_) => return Err(Unanswered),
                                };
                                handler(Request::from_parts(parts, body))
                                    .await
                                    .ok_or(Unanswered)
                            }
                        });
                    // A client that goes away mid-request is not the server's error.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .half_close(true)
                        .title_case_headers(true)
                        .max_header_size(MAX_HEAD)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Server { addr, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An answer with `status`, the headers `headers` and `body`.
pub fn answer(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response
        .body(Full::new(body.into()))
        .expect("a valid status and headers make a response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const LOOPBACK: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

    /// Sends `request` raw and reads until the server closes the connection.
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut out = Vec::new();
        c.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    async fn echo() -> Server {
        Server::start(LOOPBACK, |req: Request<Bytes>| async move {
            if req.uri().path() == "/reset" {
                return None;
            }
            if req.uri().path() == "/slow" {
                // Long enough for the client's half-close to be read before the answer.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let text = format!("{} {} {:?}", req.method(), req.uri(), req.body());
            Some(answer(200, &[("metadata-flavor", "Google")], text))
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn answers_once_per_connection_in_title_case() {
        let s = echo().await;
        let r = exchange(
            s.addr(),
            b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /again HTTP/1.1\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("\r\nMetadata-Flavor: Google\r\n"), "{r}");
        assert!(r.contains("\r\nConnection: close\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nPOST /a?b=c b\"hi\""), "{r}");
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_431() {
        let s = echo().await;
        let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let r = exchange(s.addr(), big.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        let fits = format!(
            "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX_HEAD - 100)
        );
        let r = exchange(s.addr(), fits.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
    }

    #[tokio::test]
    async fn none_closes_without_an_answer() {
        let s = echo().await;
        assert_eq!(exchange(s.addr(), b"GET /reset HTTP/1.1\r\n\r\n").await, "");
    }

    #[tokio::test]
    async fn a_half_closed_client_still_gets_its_answer() {
        let s = echo().await;
        let mut c = TcpStream::connect(s.addr()).await.unwrap();
        c.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
        c.shutdown().await.unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    }

    #[tokio::test]
    async fn stops_accepting_when_dropped() {
        let s = echo().await;
        let addr = s.addr();
        drop(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }
}
