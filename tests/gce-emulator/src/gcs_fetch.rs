//! Cloud Storage as the emulator reads it (over the test kit's client for a JSON-API storage
//! server, fake-gcs-server in tests): the check `images.insert` makes of a `rawDisk` source, a
//! gzipped tar whose first member is `disk.raw`.

use std::io::Read;

use cos_customizer_core::http_server::Bytes;
use cos_customizer_testkit::gcs_client::{encode_segment, request};

/// `text` with `%XX` escapes decoded (a `+` stays a `+`, as in a URL path).
fn decode_path(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why a `rawDisk` import failed, as the operation reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ImportError {
    /// The operation's `error.errors[].code`.
    pub code: &'static str,
    /// Its message.
    pub message: String,
    /// Its `httpErrorStatusCode`.
    pub http: u16,
}

/// Reads the `rawDisk` source `bucket`/`path` (the object's name as the source URL writes it,
/// percent-encoded per segment) from the storage server at `storage` and returns the size of
/// its `disk.raw` in bytes, and the object.
///
/// GCE's messages: a missing object is "The resource '…/storage/v1/b/B/o/O' of type 'Google
/// Cloud Storage object' was not found.", a missing bucket "The Cloud Storage bucket 'B' is not
/// found.", and a tar that is not an image "The tar archive is not a valid image." (as users
/// have reported them; the operation error codes here are the emulator's choice).
pub(crate) async fn raw_disk(
    storage: &str,
    bucket: &str,
    path: &str,
) -> Result<(u64, Bytes), ImportError> {
    let storage = storage.trim_end_matches('/');
    let object = encode_segment(&decode_path(path));
    let url = format!(
        "{storage}/storage/v1/b/{}/o/{object}?alt=media",
        encode_segment(bucket)
    );
    let unreachable = |e: anyhow::Error| ImportError {
        code: "INTERNAL_ERROR",
        message: format!("the emulator could not read the rawDisk source from {storage}: {e:#}"),
        http: 500,
    };
    let (status, body) = request("GET", &url, Vec::new())
        .await
        .map_err(unreachable)?;
    match status {
        200 => match disk_raw_size(&body) {
            Some(size) => Ok((size, body)),
            None => Err(ImportError {
                code: "INVALID_IMAGE_FILE",
                message: "The tar archive is not a valid image. It must be a gzipped tar (GNU \
                      format) whose first member is disk.raw."
                    .into(),
                http: 400,
            }),
        },
        404 => {
            let bucket_url = format!("{storage}/storage/v1/b/{}", encode_segment(bucket));
            let (bucket_status, _) = request("GET", &bucket_url, Vec::new())
                .await
                .map_err(unreachable)?;
            let message = if bucket_status == 404 {
                format!("The Cloud Storage bucket '{bucket}' is not found.")
            } else {
                format!(
                    "The resource 'https://www.googleapis.com/storage/v1/b/{bucket}/o/{object}' \
                     of type 'Google Cloud Storage object' was not found."
                )
            };
            Err(ImportError {
                code: "RESOURCE_NOT_FOUND",
                message,
                http: 404,
            })
        }
        other => Err(unreachable(anyhow::anyhow!(
            "GET {url} answered {other}: {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(200)
                .collect::<String>()
        ))),
    }
}

/// The size of `disk.raw` if `archive` is a gzipped tar whose first member is `disk.raw` (for a
/// sparse member, its full size).
fn disk_raw_size(archive: &[u8]) -> Option<u64> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut entries = tar.entries().ok()?;
    let mut first = entries.next()?.ok()?;
    let kind = first.header().entry_type();
    if first.path().ok()?.to_str()? != "disk.raw" || !(kind.is_file() || kind.is_gnu_sparse()) {
        return None;
    }
    let size = first.size();
    // A truncated or corrupt stream shows only when the member is read.
    std::io::copy(&mut first.by_ref(), &mut std::io::sink()).ok()?;
    Some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(name: &str, content: &[u8]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, content).unwrap();
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn object_paths_are_decoded() {
        assert_eq!(decode_path("w/a%20b+c%2"), "w/a b+c%2");
    }

    #[test]
    fn only_a_gzipped_tar_starting_with_disk_raw_is_an_image() {
        assert_eq!(disk_raw_size(&archive("disk.raw", &[7; 3000])), Some(3000));
        assert_eq!(disk_raw_size(&archive("other.raw", &[7; 10])), None);
        assert_eq!(disk_raw_size(b"not gzip at all"), None);
        let mut truncated = archive("disk.raw", &[7; 100_000]);
        truncated.truncate(truncated.len() / 2);
        assert_eq!(disk_raw_size(&truncated), None);
    }
}
