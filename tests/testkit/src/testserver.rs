//! A scripted HTTP/1.1 server on 127.0.0.1 for unit tests, on core's `http_server`: it
//! answers requests with a scripted list of replies, in order, and records what it was sent.
//! One request per connection (`Connection: close`), so a scripted reset can drop a
//! connection without a reply.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};

use cos_customizer_core::http_server::{self, Body, Bytes, Request, Response, Server};
use serde_json::Value;

/// What the server does with the next request.
#[derive(Clone)]
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
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
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

    /// The first value of the header `name` (in lower case), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v.as_str()))
    }
}

/// A running server; it stops when dropped.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub origin: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    _server: Server,
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

    /// Starts a server that gives `replies` in order, the last one again to anything more.
    pub async fn repeating_last(mut replies: Vec<Reply>) -> TestServer {
        let last = replies.pop().expect("at least one reply");
        TestServer::start_with(replies, Arc::new(move || last.clone())).await
    }

    /// Starts a server that gives every request what `reply` makes.
    pub async fn answering_all(reply: impl Fn() -> Reply + Send + Sync + 'static) -> TestServer {
        TestServer::start_with(Vec::new(), Arc::new(reply)).await
    }

    async fn start_with(replies: Vec<Reply>, fallback: Fallback) -> TestServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let log = seen.clone();
        let server = Server::start(([127, 0, 0, 1], 0).into(), move |req| {
            log.lock().unwrap().push(Seen::of(&req));
            let reply = replies.lock().unwrap().pop_front();
            answer(reply.unwrap_or_else(|| fallback()))
        })
        .await
        .unwrap();
        TestServer {
            origin: format!("http://{}", server.addr()),
            seen,
            _server: server,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> &str {
        self.origin.trim_start_matches("http://")
    }

    /// Everything received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A [`TestServer`] for a test whose client blocks its thread (a synchronous test, or a
/// blocking client in an async one): it runs on a runtime of its own, which ends with it.
pub struct BlockingTestServer {
    server: TestServer,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BlockingTestServer {
    /// Runs `start`, one of [`TestServer`]'s constructors, on a new runtime.
    pub fn start(start: impl Future<Output = TestServer> + Send) -> BlockingTestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the test server");
        // From a thread of its own: a test's runtime refuses to block on another one.
        let server = std::thread::scope(|s| s.spawn(|| runtime.block_on(start)).join())
            .expect("starting the test server");
        BlockingTestServer {
            server,
            runtime: Some(runtime),
        }
    }
}

impl std::ops::Deref for BlockingTestServer {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.server
    }
}

impl Drop for BlockingTestServer {
    fn drop(&mut self) {
        // Without waiting, which an async test's thread may not do.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Seen {
    fn of(req: &Request<Bytes>) -> Seen {
        let body = req.body();
        Seen {
            method: req.method().to_string(),
            target: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default(),
            authorization: req
                .headers()
                .get("authorization")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
                    (k.as_str().to_string(), value)
                })
                .collect(),
            body: (!body.is_empty()).then(|| serde_json::from_slice(body).unwrap_or(Value::Null)),
        }
    }
}

/// What the server sends for `reply`: `None` closes the connection unanswered.
async fn answer(reply: Reply) -> Option<Response<Body>> {
    let (status, kind, body) = match reply {
        Reply::Reset => return None,
        Reply::Silent => return std::future::pending().await,
        Reply::Json(status, body) => (status, "application/json", body.to_string()),
        Reply::Text(status, body) => (status, "text/html", body),
    };
    Some(http_server::answer(status, &[("content-type", kind)], body))
}
