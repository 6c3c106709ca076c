//! A plain HTTP/1 client for the emulator (hyper, one connection per call) that checks every
//! body it sends and every answer it gets against Google's discovery document.
#![allow(dead_code)]

use cos_customizer_gce_emulator::{Discovery, Emulator, Handle, Options, Route, Side};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// The seeded project and zone the tests use.
pub const P: &str = "test-project";
/// The seeded zone.
pub const Z: &str = "us-central1-a";
/// A seeded image with a 10 GB disk.
pub const IMAGE: &str = "projects/cos-cloud/global/images/cos-109-17800-147-54";

/// A client for one emulator.
pub struct Client {
    addr: std::net::SocketAddr,
}

/// Starts an emulator with these options and a client for it.
pub async fn start(opts: Options) -> (Handle, Client) {
    let emu = Emulator::start(opts).await.expect("emulator starts");
    let client = Client { addr: emu.addr() };
    (emu, client)
}

/// Options with a short `/wait` deadline.
pub fn fast() -> Options {
    Options {
        wait_deadline: std::time::Duration::from_millis(50),
        ..Options::default()
    }
}

impl Client {
    /// A client for an emulator listening on `addr`.
    pub fn at(addr: std::net::SocketAddr) -> Client {
        Client { addr }
    }

    /// Sends a request to `path` (relative to the compute base, query included) and returns the
    /// status and JSON. Checks the request body and a 200 answer against the discovery schema
    /// of the route, and an error answer against GCE's envelope.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let route = Route::of(method, path.split('?').next().unwrap_or(path));
        if let (Some(route), Some(body)) = (route, &body) {
            let (res, name) = route.discovery();
            let m = Discovery::compute_v1().method(res, name).unwrap();
            if let Some(schema) = m.request {
                Discovery::compute_v1()
                    .check(&schema, body, Side::Request)
                    .unwrap_or_else(|e| panic!("the test sent a body GCE would refuse: {e}"));
            }
        }
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("/compute/v1/{path}"))
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let json: Value = serde_json::from_slice(&body).expect("the emulator answers JSON");
        if status == 200 {
            let route = route.expect("a 200 comes from a served route");
            let (res, name) = route.discovery();
            let schema = Discovery::compute_v1()
                .method(res, name)
                .unwrap()
                .response
                .unwrap();
            Discovery::compute_v1()
                .check(&schema, &json, Side::Response)
                .unwrap_or_else(|e| {
                    panic!("{method} {path}: the answer does not fit {schema}: {e}\n{json:#}")
                });
        } else {
            let e = &json["error"];
            assert_eq!(e["code"], status, "{json}");
            assert!(e["message"].is_string(), "{json}");
            assert_eq!(e["errors"][0]["domain"], "global", "{json}");
            assert!(e["errors"][0]["reason"].is_string(), "{json}");
            assert_eq!(e["errors"][0]["message"], e["message"], "{json}");
        }
        (status, json)
    }

    /// GET, expecting 200.
    pub async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call("GET", path, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    /// POST, expecting 200.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.call("POST", path, Some(body)).await;
        assert_eq!(s, 200, "POST {path}: {v}");
        v
    }

    /// DELETE, expecting 200.
    pub async fn delete(&self, path: &str) -> Value {
        let (s, v) = self.call("DELETE", path, None).await;
        assert_eq!(s, 200, "DELETE {path}: {v}");
        v
    }

    /// The error reason of a call expected to fail with `status`.
    pub async fn fails(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> String {
        let (s, v) = self.call(method, path, body).await;
        assert_eq!(s, status, "{method} {path}: {v}");
        v["error"]["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Waits for an operation through `/wait` until DONE and returns it.
    pub async fn done(&self, op: &Value) -> Value {
        let link = op["selfLink"].as_str().unwrap();
        let path = link.split("/compute/v1/").nth(1).unwrap().to_string();
        for _ in 0..50 {
            let v = self.post(&format!("{path}/wait"), json!({})).await;
            if v["status"] == "DONE" {
                return v;
            }
        }
        panic!("operation {path} never finished");
    }

    /// Inserts a disk from the seeded image and waits for it.
    pub async fn disk(&self, name: &str) {
        let op = self
            .post(&format!("projects/{P}/zones/{Z}/disks"), json!({"name": name, "sourceImage": IMAGE, "type": format!("projects/{P}/zones/{Z}/diskTypes/pd-balanced")}))
            .await;
        assert!(self.done(&op).await.get("error").is_none());
    }

    /// Inserts an instance booting from `boot` (a disk name) and waits until RUNNING.
    pub async fn instance(&self, name: &str, boot: &str, auto_delete: bool) {
        let op = self
            .post(
                &format!("projects/{P}/zones/{Z}/instances"),
                instance_body(name, boot, auto_delete),
            )
            .await;
        assert!(self.done(&op).await.get("error").is_none());
    }
}

/// An `instances.insert` body in the shape the preloader sends.
pub fn instance_body(name: &str, boot: &str, auto_delete: bool) -> Value {
    json!({
        "name": name,
        "machineType": format!("projects/{P}/zones/{Z}/machineTypes/n1-standard-1"),
        "disks": [{"source": format!("projects/{P}/zones/{Z}/disks/{boot}"), "boot": true, "mode": "READ_WRITE", "autoDelete": auto_delete}],
        "networkInterfaces": [{"network": format!("projects/{P}/global/networks/default"), "accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]}],
        "labels": {"cos-customizer-cleanup": "", "cos-customizer-build": "abcde"},
        "metadata": {"items": [{"key": "user-data", "value": "#cloud-config\n"}, {"key": "block-project-ssh-keys", "value": "TRUE"}]},
        "serviceAccounts": [{"email": "default", "scopes": ["https://www.googleapis.com/auth/cloud-platform"]}],
        "scheduling": {"onHostMaintenance": "MIGRATE", "provisioningModel": "STANDARD", "instanceTerminationAction": "DELETE", "maxRunDuration": {"seconds": "3600"}},
    })
}
