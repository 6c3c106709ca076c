//! A tiny HTTP/1.1 server on 127.0.0.1 for unit tests: it answers requests with a scripted
//! list of replies, in order, and records what it was sent. One request per connection
//! (`Connection: close`), so a scripted reset can drop a connection without a reply.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with the next request.
pub enum Reply {
    /// Answer with this status and JSON body.
    Json(u16, Value),
    /// Answer with this status and a body that is not JSON (a proxy's page).
    Text(u16, String),
    /// Close the connection without answering, as a reset or a dying proxy does.
    Reset,
    /// Read the request and never answer, holding the connection open.
    Silent,
}

/// What the server answers once the scripted replies are used up.
type Fallback = Arc<dyn Fn() -> Reply + Send + Sync>;

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// The HTTP method.
    pub method: String,
    /// The path and query, as sent.
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The JSON body, if the request had one.
    pub body: Option<Value>,
}

impl Seen {
    /// The value of query parameter `name`, still percent-encoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.target.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }
}

/// A running server; it stops when the test's runtime does.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl TestServer {
    /// Starts a server that gives `replies` in order, then 501 to anything more.
    pub async fn start(replies: Vec<Reply>) -> TestServer {
        let no_more = || {
            Reply::Json(
                501,
                serde_json::json!({"error": {"code": 501, "message": "no reply scripted"}}),
            )
        };
        TestServer::start_with(replies, Arc::new(no_more)).await
    }

    /// Starts a server that gives every request what `reply` makes.
    pub async fn answering_all(reply: impl Fn() -> Reply + Send + Sync + 'static) -> TestServer {
        TestServer::start_with(Vec::new(), Arc::new(reply)).await
    }

    async fn start_with(replies: Vec<Reply>, fallback: Fallback) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, replies, fallback) = (log.clone(), replies.clone(), fallback.clone());
                tokio::spawn(async move { serve(stream, log, replies, fallback).await });
            }
        });
        TestServer { origin, seen }
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(
    mut stream: TcpStream,
    log: Arc<Mutex<Vec<Seen>>>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    fallback: Fallback,
) {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let body = &buf[head_end..];
    log.lock().unwrap().push(Seen {
        method: request_line.next().unwrap_or_default().to_string(),
        target: request_line.next().unwrap_or_default().to_string(),
        authorization: header("authorization"),
        body: (!body.is_empty()).then(|| serde_json::from_slice(body).unwrap_or(Value::Null)),
    });
    let reply = replies.lock().unwrap().pop_front();
    let (status, kind, body) = match reply.unwrap_or_else(|| fallback()) {
        Reply::Reset => return,
        Reply::Silent => {
            let _held = stream;
            return std::future::pending().await;
        }
        Reply::Json(status, body) => (status, "application/json", body.to_string()),
        Reply::Text(status, body) => (status, "text/html", body),
    };
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}
