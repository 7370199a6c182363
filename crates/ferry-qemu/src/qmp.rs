//! Async QMP client over a unix socket.
//!
//! ```text
//!  caller                 Qmp                         reader task              QEMU
//!    | execute(cmd) ------> | write {"execute",id=N} ------------------------------> |
//!    |                     | pending[N] = oneshot      |                            |
//!    |                     |                           | <---- {"return",id=N} ---- |
//!    | <------ Value ----- | <------ pending[N] ------ |                            |
//!    |                     |                           | <---- {"event":...} ------ |
//!    | subscribe() ------> | broadcast receiver <----- | (also: finished-jobs table)|
//! ```
//!
//! Every command carries its own timeout ([`Qmp::execute_with_timeout`]); waiting for events has a
//! separate timeout ([`EventStream::wait`]). The two never share socket state: the reader task
//! owns the read half and never times out; timeouts are `tokio::time::timeout` around oneshot or
//! broadcast receives. When the socket closes, pending commands fail with
//! [`ErrorKind::Disconnected`] and event waits end with the same kind.
//!
//! Block-job completions (`BLOCK_JOB_COMPLETED` / `BLOCK_JOB_CANCELLED`) are also kept in a small
//! table by job id, so a caller that subscribes after the job already finished still sees the
//! outcome (see `block.rs`). A `JOB_STATUS_CHANGE` to `created` clears a stale entry of that id.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot, OnceCell};
use tokio::task::JoinHandle;

use crate::error::{Error, ErrorKind, Result};

/// Default per-command timeout.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// One QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name, e.g. `SHUTDOWN`.
    pub name: String,
    /// The `data` member (`Value::Null` when absent).
    pub data: Value,
    /// QEMU's timestamp in microseconds since the epoch, when present.
    pub timestamp_us: Option<i64>,
}

/// How a block job ended, as reported by its final event.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockJobEnd {
    /// `true` for `BLOCK_JOB_CANCELLED`.
    pub cancelled: bool,
    /// Bytes the job had to process (for backup: the dirty bytes).
    pub len: u64,
    /// Bytes processed.
    pub offset: u64,
    /// The `error` member of `BLOCK_JOB_COMPLETED`, if the job failed.
    pub error: Option<String>,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value>>>>>;
pub(crate) type FinishedJobs = Arc<Mutex<HashMap<String, BlockJobEnd>>>;

/// A connected QMP monitor.
pub struct Qmp {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
    pub(crate) finished_jobs: FinishedJobs,
    closed: Arc<AtomicBool>,
    closed_tx: tokio::sync::watch::Sender<bool>,
    next_id: AtomicU64,
    reader: JoinHandle<()>,
    greeting: Value,
    command_timeout: Duration,
    schema_commands: OnceCell<(HashSet<String>, HashSet<String>)>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp").field("closed", &self.is_closed()).finish_non_exhaustive()
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A subscription to QMP events, created by [`Qmp::subscribe`]. Sees events from the moment it
/// was created.
pub struct EventStream {
    rx: broadcast::Receiver<QmpEvent>,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl EventStream {
    /// Next event matching `pred`, within `timeout`.
    pub async fn wait<F>(&mut self, mut pred: F, timeout: Duration) -> Result<QmpEvent>
    where
        F: FnMut(&QmpEvent) -> bool,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                r = self.rx.recv() => match r {
                    Ok(ev) if pred(&ev) => return Ok(ev),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "QMP event subscriber lagged");
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Error::new(ErrorKind::Disconnected, "QMP connection closed"));
                    }
                },
                _ = self.closed.wait_for(|c| *c) => {
                    // Drain what is already queued before reporting the close.
                    while let Ok(ev) = self.rx.try_recv() {
                        if pred(&ev) {
                            return Ok(ev);
                        }
                    }
                    return Err(Error::new(
                        ErrorKind::Disconnected,
                        "QMP connection closed while waiting for an event",
                    ));
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::new(
                        ErrorKind::Timeout,
                        format!("No matching QMP event within {timeout:?}"),
                    ));
                }
            }
        }
    }

    /// Next event named `name` within `timeout`.
    pub async fn wait_named(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent> {
        self.wait(|e| e.name == name, timeout).await
    }
}

impl Qmp {
    /// Connect to the QMP socket at `path`, retrying until `connect_timeout` (QEMU creates the
    /// socket shortly after start), read the greeting and negotiate capabilities.
    pub async fn connect(path: &Path, connect_timeout: Duration) -> Result<Self> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) => {
                    let retry =
                        matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused);
                    if !retry || start.elapsed() >= connect_timeout {
                        return Err(Error::io(format!("Cannot connect to QMP socket {}", path.display()), e));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let (rd, wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let remaining = connect_timeout.saturating_sub(start.elapsed()).max(Duration::from_secs(2));
        let greeting = tokio::time::timeout(remaining, read_json_line(&mut rd))
            .await
            .map_err(|_| Error::new(ErrorKind::Timeout, "No QMP greeting from QEMU"))??
            .ok_or_else(|| Error::new(ErrorKind::Disconnected, "QMP socket closed before greeting"))?;
        if greeting.get("QMP").is_none() {
            return Err(Error::new(ErrorKind::Protocol, format!("Unexpected QMP greeting: {greeting}")));
        }

        let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
        let (events, _) = broadcast::channel(1024);
        let finished_jobs: FinishedJobs = Arc::new(Mutex::new(HashMap::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let (closed_tx, _) = tokio::sync::watch::channel(false);
        let reader = tokio::spawn(reader_task(
            rd,
            pending.clone(),
            events.clone(),
            finished_jobs.clone(),
            closed.clone(),
            closed_tx.clone(),
        ));
        let qmp = Qmp {
            writer: tokio::sync::Mutex::new(wr),
            pending,
            events,
            finished_jobs,
            closed,
            closed_tx,
            next_id: AtomicU64::new(1),
            reader,
            greeting,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            schema_commands: OnceCell::new(),
        };
        qmp.execute("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    /// The greeting QEMU sent (`{"QMP": {"version": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// QEMU's version triple from the greeting.
    pub fn version(&self) -> Option<(u64, u64, u64)> {
        let v = self.greeting.pointer("/QMP/version/qemu")?;
        Some((v.get("major")?.as_u64()?, v.get("minor")?.as_u64()?, v.get("micro")?.as_u64()?))
    }

    /// Change the default per-command timeout.
    pub fn set_command_timeout(&mut self, timeout: Duration) {
        self.command_timeout = timeout;
    }

    /// True once the socket is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Subscribe to events from now on.
    pub fn subscribe(&self) -> EventStream {
        EventStream { rx: self.events.subscribe(), closed: self.closed_tx.subscribe() }
    }

    /// Subscribe and wait for the next event matching `pred` (events before this call are not
    /// seen: subscribe first with [`Qmp::subscribe`] when the trigger is a command).
    pub async fn wait_event<F>(&self, pred: F, timeout: Duration) -> Result<QmpEvent>
    where
        F: FnMut(&QmpEvent) -> bool,
    {
        self.subscribe().wait(pred, timeout).await
    }

    /// Run `cmd` with `args` (`Value::Null` or an object) under the default command timeout.
    pub async fn execute(&self, cmd: &str, args: Value) -> Result<Value> {
        self.execute_with_timeout(cmd, args, self.command_timeout).await
    }

    /// Run `cmd` with its own timeout. A QMP error reply becomes [`ErrorKind::Qmp`].
    pub async fn execute_with_timeout(&self, cmd: &str, args: Value, timeout: Duration) -> Result<Value> {
        if self.is_closed() {
            return Err(Error::new(ErrorKind::Disconnected, format!("QMP connection closed; cannot run {cmd}")));
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let mut msg = json!({ "execute": cmd, "id": id });
        match args {
            Value::Null => {}
            Value::Object(ref m) if m.is_empty() => {}
            Value::Object(_) => msg["arguments"] = args,
            other => {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("QMP arguments for {cmd} must be an object, got {other}"),
                ))
            }
        }
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut line = msg.to_string();
        line.push('\n');
        let res = tokio::time::timeout(timeout, async {
            {
                let mut w = self.writer.lock().await;
                w.write_all(line.as_bytes()).await.map_err(|e| {
                    Error::with_source(ErrorKind::Disconnected, format!("Cannot send QMP command {cmd}"), e)
                })?;
            }
            match rx.await {
                Ok(r) => r,
                Err(_) => {
                    Err(Error::new(ErrorKind::Disconnected, format!("QMP connection closed while running {cmd}")))
                }
            }
        })
        .await;
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                lock(&self.pending).remove(&id);
                Err(match e.kind() {
                    ErrorKind::Qmp { class, desc } => Error::new(
                        ErrorKind::Qmp { class: class.clone(), desc: desc.clone() },
                        format!("QMP command {cmd} failed"),
                    ),
                    _ => e,
                })
            }
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(Error::new(ErrorKind::Timeout, format!("QMP command {cmd} got no reply within {timeout:?}")))
            }
        }
    }

    /// `query-status`.
    pub async fn query_status(&self) -> Result<RunState> {
        let v = self.execute("query-status", Value::Null).await?;
        let status = v
            .get("status")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("Bad query-status reply: {v}")))?
            .to_string();
        let running = v.get("running").and_then(Value::as_bool).unwrap_or(false);
        Ok(RunState { status, running })
    }

    async fn schema(&self) -> Result<&(HashSet<String>, HashSet<String>)> {
        self.schema_commands
            .get_or_try_init(|| async {
                let v = self.execute("query-qmp-schema", Value::Null).await?;
                let arr = v
                    .as_array()
                    .ok_or_else(|| Error::new(ErrorKind::Protocol, "query-qmp-schema did not return a list"))?;
                let mut cmds = HashSet::new();
                let mut events = HashSet::new();
                for e in arr {
                    let name = e.get("name").and_then(Value::as_str);
                    match (e.get("meta-type").and_then(Value::as_str), name) {
                        (Some("command"), Some(n)) => {
                            cmds.insert(n.to_string());
                        }
                        (Some("event"), Some(n)) => {
                            events.insert(n.to_string());
                        }
                        _ => {}
                    }
                }
                Ok((cmds, events))
            })
            .await
    }

    /// Whether QEMU knows the QMP command `name` (probed once through `query-qmp-schema`).
    pub async fn schema_has_command(&self, name: &str) -> Result<bool> {
        Ok(self.schema().await?.0.contains(name))
    }

    /// Whether QEMU can emit the event `name`.
    pub async fn schema_has_event(&self, name: &str) -> Result<bool> {
        Ok(self.schema().await?.1.contains(name))
    }

    /// Run an HMP command line through `human-monitor-command` and return its text. HMP errors
    /// come back as text, so callers must inspect it.
    pub async fn hmp(&self, command_line: &str) -> Result<String> {
        let v = self.execute("human-monitor-command", json!({ "command-line": command_line })).await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::new(ErrorKind::Protocol, format!("human-monitor-command returned a non-string: {v}")))
    }

    /// Run `qemu-io <node> "<cmd>"` through HMP. qemu-io prints nothing on success (its normal
    /// output goes to QEMU's stdout), so any text in the reply is an error.
    pub async fn qemu_io(&self, node: &str, cmd: &str) -> Result<()> {
        if node.contains(char::is_whitespace) {
            return Err(Error::new(ErrorKind::Hmp, format!("Refusing node name with whitespace: {node}")));
        }
        self.qemu_io_on(node, cmd).await
    }

    /// HMP `qemu-io -d <qom_path> "<cmd>"`: on the block backend of a device (the guest's path).
    pub async fn qemu_io_device(&self, qom_path: &str, cmd: &str) -> Result<()> {
        if qom_path.contains(char::is_whitespace) {
            return Err(Error::new(ErrorKind::Hmp, format!("Refusing device path with whitespace: {qom_path}")));
        }
        self.qemu_io_on(&format!("-d {qom_path}"), cmd).await
    }

    async fn qemu_io_on(&self, target: &str, cmd: &str) -> Result<()> {
        if cmd.contains('"') || cmd.contains('\n') || target.is_empty() {
            return Err(Error::new(ErrorKind::Hmp, format!("Refusing qemu-io command with quotes or newlines: {cmd}")));
        }
        let out = self.hmp(&format!("qemu-io {target} \"{cmd}\"")).await?;
        let out = out.trim();
        if out.is_empty() {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::Hmp, format!("qemu-io {target} \"{cmd}\" failed: {out}")))
        }
    }

    /// `transaction` with the given actions (each `{"type": ..., "data": {...}}`).
    pub async fn transaction(&self, actions: Vec<Value>) -> Result<()> {
        self.execute("transaction", json!({ "actions": actions })).await.map(|_| ())
    }

    /// `quit`. QEMU may close the socket before replying; that counts as success.
    pub async fn quit(&self, timeout: Duration) -> Result<()> {
        match self.execute_with_timeout("quit", Value::Null, timeout).await {
            Ok(_) => Ok(()),
            Err(e) if *e.kind() == ErrorKind::Disconnected => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Result of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunState {
    /// QEMU's RunState, e.g. `running`, `paused`, `shutdown`, `prelaunch`.
    pub status: String,
    /// Whether vCPUs run.
    pub running: bool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_json_line(rd: &mut BufReader<OwnedReadHalf>) -> Result<Option<Value>> {
    let mut line = String::new();
    loop {
        line.clear();
        let n = rd
            .read_line(&mut line)
            .await
            .map_err(|e| Error::with_source(ErrorKind::Disconnected, "QMP socket read failed", e))?;
        if n == 0 {
            return Ok(None);
        }
        if line.trim().is_empty() {
            continue;
        }
        return serde_json::from_str(line.trim()).map(Some).map_err(|e| {
            Error::with_source(ErrorKind::Protocol, format!("Invalid JSON from QMP: {}", line.trim()), e)
        });
    }
}

fn parse_event(v: &Value) -> Option<QmpEvent> {
    let name = v.get("event")?.as_str()?.to_string();
    let ts = v
        .get("timestamp")
        .and_then(|t| Some(t.get("seconds")?.as_i64()? * 1_000_000 + t.get("microseconds")?.as_i64()?));
    Some(QmpEvent { name, data: v.get("data").cloned().unwrap_or(Value::Null), timestamp_us: ts })
}

fn record_job_event(jobs: &FinishedJobs, ev: &QmpEvent) {
    let device = ev.data.get("device").and_then(Value::as_str);
    match ev.name.as_str() {
        "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" => {
            if let Some(id) = device {
                let end = BlockJobEnd {
                    cancelled: ev.name == "BLOCK_JOB_CANCELLED",
                    len: ev.data.get("len").and_then(Value::as_u64).unwrap_or(0),
                    offset: ev.data.get("offset").and_then(Value::as_u64).unwrap_or(0),
                    error: ev.data.get("error").and_then(Value::as_str).map(str::to_string),
                };
                let mut j = lock(jobs);
                if j.len() > 256 {
                    j.clear();
                }
                j.insert(id.to_string(), end);
            }
        }
        "JOB_STATUS_CHANGE" => {
            let created = ev.data.get("status").and_then(Value::as_str) == Some("created");
            if let (true, Some(id)) = (created, ev.data.get("id").and_then(Value::as_str)) {
                lock(jobs).remove(id);
            }
        }
        _ => {}
    }
}

async fn reader_task(
    mut rd: BufReader<OwnedReadHalf>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
    jobs: FinishedJobs,
    closed: Arc<AtomicBool>,
    closed_tx: tokio::sync::watch::Sender<bool>,
) {
    loop {
        let v = match read_json_line(&mut rd).await {
            Ok(Some(v)) => v,
            Ok(None) => break,
            Err(e) if *e.kind() == ErrorKind::Protocol => {
                tracing::warn!(error = %e, "Skipping invalid QMP line");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "QMP reader stops");
                break;
            }
        };
        if let Some(ev) = parse_event(&v) {
            record_job_event(&jobs, &ev);
            let _ = events.send(ev);
            continue;
        }
        let Some(id) = v.get("id").and_then(Value::as_u64) else {
            tracing::warn!(reply = %v, "QMP reply without id");
            continue;
        };
        let Some(tx) = lock(&pending).remove(&id) else {
            tracing::debug!(id, "QMP reply for a command nobody waits for");
            continue;
        };
        let r = if let Some(ret) = v.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = v.get("error") {
            let class = err.get("class").and_then(Value::as_str).unwrap_or("Unknown").to_string();
            let desc = err.get("desc").and_then(Value::as_str).unwrap_or("").to_string();
            Err(Error::new(ErrorKind::Qmp { class, desc }, "QMP command failed"))
        } else {
            Err(Error::new(ErrorKind::Protocol, format!("QMP reply without return or error: {v}")))
        };
        let _ = tx.send(r);
    }
    closed.store(true, Ordering::SeqCst);
    let _ = closed_tx.send(true);
    let drained: Vec<_> = lock(&pending).drain().collect();
    for (_, tx) in drained {
        let _ = tx.send(Err(Error::new(ErrorKind::Disconnected, "QMP connection closed")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_1_event_parsing_and_job_table() {
        let v: Value = serde_json::from_str(
            r#"{"timestamp":{"seconds":10,"microseconds":5},"event":"BLOCK_JOB_COMPLETED",
               "data":{"device":"d1","len":65536,"offset":65536,"speed":0,"type":"backup",
               "error":"Input/output error"}}"#,
        )
        .expect("valid json");
        let ev = parse_event(&v).expect("event");
        assert_eq!(ev.timestamp_us, Some(10_000_005));
        let jobs: FinishedJobs = Arc::new(Mutex::new(HashMap::new()));
        record_job_event(&jobs, &ev);
        let end = lock(&jobs).get("d1").cloned().expect("recorded");
        assert_eq!(end.error.as_deref(), Some("Input/output error"));
        let created = QmpEvent {
            name: "JOB_STATUS_CHANGE".into(),
            data: json!({"id": "d1", "status": "created"}),
            timestamp_us: None,
        };
        record_job_event(&jobs, &created);
        assert!(lock(&jobs).is_empty());
    }
}
