//! A minimal QMP client: greeting, `qmp_capabilities`, then commands, skipping the
//! asynchronous events QEMU may send between a command and its return.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// How long QEMU gets to answer one message.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects to the QMP socket and leaves capabilities negotiation mode.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to QMP socket {}", socket.display()))?;
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = qmp
            .read_message()
            .await
            .context("reading the QMP greeting")?;
        if greeting.get("QMP").is_none() {
            bail!("unexpected QMP greeting: {greeting}");
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .with_context(|| format!("sending QMP command {command}"))?;
        loop {
            let reply = self
                .read_message()
                .await
                .with_context(|| format!("reading the reply to QMP command {command}"))?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                bail!("QMP command {command} failed: {e}");
            }
            // Anything else is an event (`{"event": …}`); not what we wait for.
        }
    }

    async fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(REPLY_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .context("waiting for QEMU")?
            .context("reading from the QMP socket")?;
        if n == 0 {
            bail!("QEMU closed the QMP connection");
        }
        serde_json::from_str(&line).with_context(|| format!("parsing QMP message {line:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QEMU that sends an event before each return.
    #[tokio::test]
    async fn skips_events_and_returns_results() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let fake = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .await
                .unwrap();
            let mut seen = Vec::new();
            while let Some(l) = lines.next_line().await.unwrap() {
                let v: Value = serde_json::from_str(&l).unwrap();
                seen.push(v.clone());
                w.write_all(b"{\"event\": \"RESET\", \"data\": {}}\r\n")
                    .await
                    .unwrap();
                let reply = if v["execute"] == "bad" {
                    "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\r\n"
                } else {
                    "{\"return\": {}}\r\n"
                };
                w.write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        let mut q = Qmp::connect(&sock).await.unwrap();
        let args = json!({"device": "disk0", "size": 1024});
        assert_eq!(
            q.execute("block_resize", Some(args.clone())).await.unwrap(),
            json!({})
        );
        let e = q.execute("bad", None).await.unwrap_err();
        assert!(
            format!("{e:#}").contains("QMP command bad failed")
                && format!("{e:#}").contains("nope")
        );
        drop(q);
        let seen = fake.await.unwrap();
        assert_eq!(seen[0], json!({"execute": "qmp_capabilities"}));
        assert_eq!(
            seen[1],
            json!({"execute": "block_resize", "arguments": args})
        );
    }
}
