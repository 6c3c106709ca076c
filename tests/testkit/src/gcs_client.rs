//! A plain HTTP/1.1 client for a Cloud Storage JSON-API server (fake-gcs-server in tests), which
//! the fake-gcs-server harness and the Compute emulator's `rawDisk` reads share.

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Sends one request to an `http://` URL and returns the status and the whole body.
pub async fn request(method: &str, url: &str, body: Vec<u8>) -> anyhow::Result<(u16, Bytes)> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url}: only http:// storage endpoints are supported");
    }
    let authority = uri
        .authority()
        .with_context(|| format!("{url}: no host"))?
        .clone();
    let stream = TcpStream::connect((authority.host(), authority.port_u16().unwrap_or(80)))
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {authority}"))?;
    // The connection is driven while the request is in flight and ends with it.
    tokio::spawn(connection);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .with_context(|| format!("building {method} {url}"))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .with_context(|| format!("reading the answer to {method} {url}"))?
        .to_bytes();
    Ok((status, bytes))
}

/// `text` percent-encoded as one URL path segment (everything but RFC 3986's unreserved
/// characters), as the JSON API wants object names: `a/b c` → `a%2Fb%20c`.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_are_encoded_as_one_segment() {
        assert_eq!(
            encode_segment("w/cos-customizer/a b+c~"),
            "w%2Fcos-customizer%2Fa%20b%2Bc~"
        );
    }
}
