//! Optional record of every message this site sends to the vault (FAB-9): one JSON line per
//! message with the path and the body, so an audit (and a test) can compare what is sent with
//! `docs/data-privacy.md`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct Recorder {
    file: Option<Mutex<std::fs::File>>,
}

impl Recorder {
    pub fn new(path: Option<PathBuf>) -> std::io::Result<Recorder> {
        let file = match path {
            Some(p) => Some(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?)),
            None => None,
        };
        Ok(Recorder { file })
    }

    pub fn record<T: serde::Serialize>(&self, path: &str, body: &T) {
        let Some(f) = &self.file else { return };
        let line = serde_json::json!({"path": path, "body": body});
        if let Ok(mut f) = f.lock() {
            let _ = writeln!(f, "{line}");
        }
    }
}
