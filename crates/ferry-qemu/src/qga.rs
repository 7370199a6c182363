//! qemu-guest-agent client over the host side of the `org.qemu.guest_agent.0` chardev socket.
//!
//! QGA is strictly request/response without ids or events. A reply may be stale (a command that
//! timed out answers later, or the agent restarted), so the client re-synchronises with
//! `0xFF` + `guest-sync-delimited` before its first command and after any timeout or protocol
//! error. On 7.2 the agent first answers the raw `0xFF` with a JSON parse error, then the sync
//! reply prefixed by `0xFF`: everything before that `0xFF` byte is discarded.
//!
//! [`FreezeGuard`] guarantees a thaw: either the caller awaits [`FreezeGuard::thaw`], or dropping
//! the guard spawns a best-effort thaw task on the current tokio runtime.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};

/// Default timeout for one guest-agent command.
pub const DEFAULT_QGA_TIMEOUT: Duration = Duration::from_secs(10);

struct Conn {
    stream: BufReader<UnixStream>,
    synced: bool,
}

/// A guest-agent connection.
pub struct Qga {
    conn: Mutex<Conn>,
    timeout: Duration,
}

impl std::fmt::Debug for Qga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qga").finish_non_exhaustive()
    }
}

/// Result of `guest-exec-status` once the process exited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, if the process exited normally.
    pub exit_code: Option<i32>,
    /// Terminating signal, if any.
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// One guest network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    pub name: String,
    pub hardware_address: Option<String>,
    /// (address, prefix length) pairs, IPv4 and IPv6.
    pub addresses: Vec<(String, u8)>,
}

/// Filesystem freeze state (`guest-fsfreeze-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeStatus {
    Thawed,
    Frozen,
}

impl Qga {
    /// Connect to the chardev socket at `path`. Does not talk to the agent yet.
    pub async fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|e| Error::io(format!("Cannot connect to guest agent socket {}", path.display()), e))?;
        Ok(Qga {
            conn: Mutex::new(Conn { stream: BufReader::new(stream), synced: false }),
            timeout: DEFAULT_QGA_TIMEOUT,
        })
    }

    /// Change the per-command timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Wait until the agent answers a sync (the guest may still be booting).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let mut c = self.conn.lock().await;
            let attempt = Duration::from_secs(2).min(timeout);
            match sync(&mut c, attempt).await {
                Ok(()) => return Ok(()),
                Err(e) if start.elapsed() + attempt > timeout => {
                    return Err(Error::with_source(
                        ErrorKind::Timeout,
                        format!("Guest agent not ready within {timeout:?}"),
                        e,
                    ))
                }
                Err(_) => {}
            }
            drop(c);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Run a guest-agent command with the default timeout.
    pub async fn execute(&self, cmd: &str, args: Value) -> Result<Value> {
        self.execute_with_timeout(cmd, args, self.timeout).await
    }

    /// Run a guest-agent command; a timeout forces a re-sync before the next command.
    pub async fn execute_with_timeout(&self, cmd: &str, args: Value, timeout: Duration) -> Result<Value> {
        let mut c = self.conn.lock().await;
        if !c.synced {
            sync(&mut c, timeout).await?;
        }
        let mut msg = json!({ "execute": cmd });
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        let res = tokio::time::timeout(timeout, async {
            c.stream
                .get_mut()
                .write_all(line.as_bytes())
                .await
                .map_err(|e| Error::with_source(ErrorKind::Disconnected, "Guest agent write failed", e))?;
            read_reply(&mut c.stream).await
        })
        .await;
        let v = match res {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                c.synced = false;
                return Err(e);
            }
            Err(_) => {
                c.synced = false;
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("Guest agent command {cmd} got no reply within {timeout:?}"),
                ));
            }
        };
        if let Some(ret) = v.get("return") {
            return Ok(ret.clone());
        }
        if let Some(err) = v.get("error") {
            let s = |k| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Err(Error::new(
                ErrorKind::Qga { class: s("class"), desc: s("desc") },
                format!("Guest agent command {cmd} failed"),
            ));
        }
        c.synced = false;
        Err(Error::new(ErrorKind::Protocol, format!("Guest agent reply without return or error: {v}")))
    }

    /// `guest-ping`.
    pub async fn ping(&self) -> Result<()> {
        self.execute("guest-ping", Value::Null).await.map(|_| ())
    }

    /// `guest-fsfreeze-status`.
    pub async fn fsfreeze_status(&self) -> Result<FreezeStatus> {
        let v = self.execute("guest-fsfreeze-status", Value::Null).await?;
        match v.as_str() {
            Some("thawed") => Ok(FreezeStatus::Thawed),
            Some("frozen") => Ok(FreezeStatus::Frozen),
            _ => Err(Error::new(ErrorKind::Protocol, format!("Unexpected fsfreeze status {v}"))),
        }
    }

    /// `guest-fsfreeze-freeze`; returns the number of frozen filesystems. Prefer
    /// [`Qga::freeze`], which guarantees the thaw.
    pub async fn fsfreeze_freeze(&self) -> Result<u64> {
        let v = self.execute("guest-fsfreeze-freeze", Value::Null).await?;
        v.as_u64().ok_or_else(|| Error::new(ErrorKind::Protocol, format!("Bad freeze reply {v}")))
    }

    /// `guest-fsfreeze-thaw`; returns the number of thawed filesystems.
    pub async fn fsfreeze_thaw(&self) -> Result<u64> {
        let v = self.execute("guest-fsfreeze-thaw", Value::Null).await?;
        v.as_u64().ok_or_else(|| Error::new(ErrorKind::Protocol, format!("Bad thaw reply {v}")))
    }

    /// Freeze guest filesystems and return a guard that thaws them. If the freeze fails or times
    /// out, a thaw is attempted before the error is returned (the guest may have frozen anyway).
    pub async fn freeze(self: &Arc<Self>, timeout: Duration) -> Result<FreezeGuard> {
        match self.execute_with_timeout("guest-fsfreeze-freeze", Value::Null, timeout).await {
            Ok(v) => Ok(FreezeGuard { qga: Some(self.clone()), frozen: v.as_u64().unwrap_or(0), timeout }),
            Err(e) => {
                if let Err(te) = self.execute_with_timeout("guest-fsfreeze-thaw", Value::Null, timeout).await {
                    tracing::warn!(error = %te, "Thaw after failed freeze failed");
                }
                Err(e)
            }
        }
    }

    /// `guest-exec` with captured output; returns the guest pid.
    pub async fn exec(&self, path: &str, args: &[&str]) -> Result<i64> {
        let v = self.execute("guest-exec", json!({"path": path, "arg": args, "capture-output": true})).await?;
        v.get("pid")
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("Bad guest-exec reply {v}")))
    }

    /// One `guest-exec-status` poll: `None` while the process runs.
    pub async fn exec_status(&self, pid: i64) -> Result<Option<ExecOutput>> {
        let v = self.execute("guest-exec-status", json!({ "pid": pid })).await?;
        if !v.get("exited").and_then(Value::as_bool).unwrap_or(false) {
            return Ok(None);
        }
        let decode = |k: &str| -> Result<Vec<u8>> {
            match v.get(k).and_then(Value::as_str) {
                None => Ok(Vec::new()),
                Some(s) => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| Error::with_source(ErrorKind::Protocol, format!("Bad base64 in {k}"), e)),
            }
        };
        let int = |k: &str| v.get(k).and_then(Value::as_i64).map(|x| x as i32);
        Ok(Some(ExecOutput {
            exit_code: int("exitcode"),
            signal: int("signal"),
            stdout: decode("out-data")?,
            stderr: decode("err-data")?,
        }))
    }

    /// Run a command in the guest and wait for it (polling `guest-exec-status`).
    pub async fn exec_wait(&self, path: &str, args: &[&str], timeout: Duration) -> Result<ExecOutput> {
        let pid = self.exec(path, args).await?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            if let Some(out) = self.exec_status(pid).await? {
                return Ok(out);
            }
            if start.elapsed() > timeout {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("Guest command {path} did not finish within {timeout:?}"),
                ));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// `guest-network-get-interfaces`.
    pub async fn network_get_interfaces(&self) -> Result<Vec<GuestInterface>> {
        let v = self.execute("guest-network-get-interfaces", Value::Null).await?;
        let arr = v.as_array().ok_or_else(|| Error::new(ErrorKind::Protocol, "Interfaces reply is not a list"))?;
        Ok(arr
            .iter()
            .filter_map(|i| {
                Some(GuestInterface {
                    name: i.get("name")?.as_str()?.to_string(),
                    hardware_address: i.get("hardware-address").and_then(Value::as_str).map(str::to_string),
                    addresses: i
                        .get("ip-addresses")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| {
                                    Some((
                                        x.get("ip-address")?.as_str()?.to_string(),
                                        u8::try_from(x.get("prefix")?.as_u64()?).ok()?,
                                    ))
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            })
            .collect())
    }

    /// `guest-shutdown` (mode `powerdown`). The agent usually does not answer, so a timeout or
    /// disconnect counts as success.
    pub async fn shutdown(&self) -> Result<()> {
        match self.execute_with_timeout("guest-shutdown", json!({"mode": "powerdown"}), Duration::from_secs(3)).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Disconnected) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Filesystems frozen by [`Qga::freeze`]. Thaw with [`FreezeGuard::thaw`]; dropping the guard
/// without it spawns a best-effort thaw.
#[must_use = "dropping the guard thaws in the background; call thaw().await"]
pub struct FreezeGuard {
    qga: Option<Arc<Qga>>,
    frozen: u64,
    timeout: Duration,
}

impl FreezeGuard {
    /// Number of filesystems the freeze reported.
    pub fn frozen(&self) -> u64 {
        self.frozen
    }

    /// Thaw now; returns the number of thawed filesystems.
    pub async fn thaw(mut self) -> Result<u64> {
        let Some(qga) = self.qga.take() else {
            return Ok(0);
        };
        let v = qga.execute_with_timeout("guest-fsfreeze-thaw", Value::Null, self.timeout).await?;
        Ok(v.as_u64().unwrap_or(0))
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        let Some(qga) = self.qga.take() else { return };
        let timeout = self.timeout;
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(async move {
                    if let Err(e) = qga.execute_with_timeout("guest-fsfreeze-thaw", Value::Null, timeout).await {
                        tracing::error!(error = %e, "Background thaw after dropped FreezeGuard failed");
                    }
                });
            }
            Err(_) => {
                tracing::error!("FreezeGuard dropped outside a tokio runtime; guest stays frozen")
            }
        }
    }
}

async fn sync(c: &mut Conn, timeout: Duration) -> Result<()> {
    let id = rand_id();
    let mut msg = vec![0xFFu8];
    msg.extend_from_slice(json!({"execute": "guest-sync-delimited", "arguments": {"id": id}}).to_string().as_bytes());
    msg.push(b'\n');
    let r = tokio::time::timeout(timeout, async {
        c.stream
            .get_mut()
            .write_all(&msg)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Disconnected, "Guest agent write failed", e))?;
        loop {
            // Skip everything up to the 0xFF that starts the sync reply.
            loop {
                let b = c
                    .stream
                    .read_u8()
                    .await
                    .map_err(|e| Error::with_source(ErrorKind::Disconnected, "Guest agent read failed", e))?;
                if b == 0xFF {
                    break;
                }
            }
            let v = read_reply(&mut c.stream).await?;
            if v.get("return").and_then(Value::as_u64) == Some(id) {
                return Ok(());
            }
        }
    })
    .await;
    match r {
        Ok(Ok(())) => {
            c.synced = true;
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            format!("Guest agent did not answer guest-sync-delimited within {timeout:?}"),
        )),
    }
}

fn rand_id() -> u64 {
    let mut b = [0u8; 8];
    if getrandom(&mut b).is_err() {
        return 0x5eed;
    }
    u64::from_le_bytes(b) >> 12
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// The longest reply line taken from a guest agent: the guest is not trusted, and what it says
/// must not cost the host its memory (nor flow unbounded into reports).
pub const MAX_REPLY_BYTES: usize = 1 << 20;

async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R) -> Result<Value> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut *rd)
            .take(MAX_REPLY_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Disconnected, "Guest agent read failed", e))?;
        if n == 0 {
            return Err(Error::new(ErrorKind::Disconnected, "Guest agent socket closed"));
        }
        if buf.len() > MAX_REPLY_BYTES {
            return Err(Error::new(
                ErrorKind::Protocol,
                format!("Guest agent reply longer than {MAX_REPLY_BYTES} bytes; ignored"),
            ));
        }
        let text: Vec<u8> = buf.iter().copied().filter(|b| *b != 0xFF).collect();
        let text = String::from_utf8_lossy(&text);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        return serde_json::from_str(text).map_err(|e| {
            // Quote only the start of what the guest sent.
            let shown: String = text.chars().take(200).collect();
            Error::with_source(ErrorKind::Protocol, format!("Invalid JSON from guest agent: {shown}"), e)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sec_3_a_guest_agent_reply_is_bounded() {
        let (mut guest, host) = tokio::net::UnixStream::pair().expect("pair");
        let mut rd = BufReader::new(host);
        guest.write_all(b"{\"return\": {}}\n").await.expect("write");
        assert!(read_reply(&mut rd).await.expect("a normal reply").get("return").is_some());
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..40 {
                if guest.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            guest
        });
        let e = read_reply(&mut rd).await.expect_err("2.5 MiB without a line end");
        assert_eq!(*e.kind(), ErrorKind::Protocol, "{e}");
        assert!(e.to_string().contains("longer than"), "{e}");
        drop(rd);
        let _ = writer.await;
    }
}
