//! A real headless Chromium (Debian's `chromium` package, found on the PATH or in
//! /usr/lib/chromium) driven over the DevTools protocol, for the portal tests. The browser
//! process is started by this harness and killed by its PID when the [`Portal`] is dropped.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

use crate::common::Lab;

/// Where the tests keep their screenshots.
pub fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/portal-artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    std::fs::canonicalize(&dir).unwrap_or(dir)
}

fn chromium() -> PathBuf {
    for p in ["/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("Chromium is not installed: scripts/setup-deps.sh installs Debian's chromium package");
}

/// A browser session on a lab's vault portal.
pub struct Portal {
    // The tab borrows the browser's connection; the browser (and its process) goes, then the
    // temporary directory Chromium wrote its own scratch files to.
    pub tab: Arc<Tab>,
    browser: Browser,
    pub url: String,
    _tmp: tempfile::TempDir,
}

impl Portal {
    /// Start Chromium for the lab's vault (its certificate is from the lab's private CA, which
    /// this throwaway browser profile is told to accept).
    pub fn open(lab: &Lab) -> Portal {
        let url = lab.env("FERRY_URL");
        let args: Vec<&OsStr> = vec![OsStr::new("--disable-dev-shm-usage"), OsStr::new("--no-first-run")];
        // Chromium leaves `org.chromium.Chromium.*` scratch directories in TMPDIR: give it one
        // of ours, removed with the portal.
        let tmp = tempfile::tempdir().expect("browser tmp");
        let envs = std::collections::HashMap::from([("TMPDIR".to_string(), tmp.path().display().to_string())]);
        let opts = LaunchOptions::default_builder()
            .path(Some(chromium()))
            .process_envs(Some(envs))
            .headless(true)
            .sandbox(false)
            .ignore_certificate_errors(true)
            .window_size(Some((1400, 1000)))
            .idle_browser_timeout(Duration::from_secs(900))
            .args(args)
            .build()
            .expect("launch options");
        let browser = Browser::new(opts).expect("Chromium starts");
        let tab = browser.new_tab().expect("a tab");
        tab.set_default_timeout(Duration::from_secs(60));
        Portal { tab, browser, url, _tmp: tmp }
    }

    /// Go to a portal path (or a full URL) and wait for the page. A navigation the browser
    /// aborts (e.g. ERR_NETWORK_CHANGED while the lab adds interfaces) is retried: it is a GET.
    pub fn goto(&self, path: &str) {
        let url = if path.starts_with("https://") { path.to_string() } else { format!("{}{path}", self.url) };
        for attempt in 0..5 {
            let ok = self.tab.navigate_to(&url).and_then(|t| t.wait_until_navigated()).is_ok();
            if ok {
                self.wait_ready();
                if !self.on_error_page() {
                    return;
                }
            }
            assert!(attempt < 4, "cannot load {url}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Whether the browser shows its own error page instead of a portal page.
    pub fn on_error_page(&self) -> bool {
        self.tab.get_url().starts_with("chrome-error:")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.eval("document.readyState") == "complete" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("page did not load: {}", self.path());
    }

    /// Evaluate a JavaScript expression and return its value as JSON.
    pub fn eval(&self, js: &str) -> Value {
        let wrapped = format!("JSON.stringify((() => {{ return ({js}); }})())");
        let r = self.tab.evaluate(&wrapped, false).unwrap_or_else(|e| panic!("evaluate {js}: {e}"));
        match r.value {
            Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Evaluate an expression that yields a promise.
    pub fn eval_async(&self, js: &str) -> Value {
        let wrapped = format!("(async () => JSON.stringify(await ({js})))()");
        let r = self.tab.evaluate(&wrapped, true).unwrap_or_else(|e| panic!("evaluate {js}: {e}"));
        match r.value {
            Some(Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// The current path and query.
    pub fn path(&self) -> String {
        self.eval("location.pathname + location.search").as_str().unwrap_or_default().to_string()
    }

    /// The visible text of the page.
    pub fn text(&self) -> String {
        self.eval("document.body.innerText").as_str().unwrap_or_default().to_string()
    }

    /// The visible text of the first element matching `selector` (empty when there is none).
    pub fn text_of(&self, selector: &str) -> String {
        let js = format!("(document.querySelector({}) || {{innerText: ''}}).innerText", js_str(selector));
        self.eval(&js).as_str().unwrap_or_default().to_string()
    }

    pub fn exists(&self, selector: &str) -> bool {
        self.eval(&format!("document.querySelector({}) !== null", js_str(selector))) == Value::Bool(true)
    }

    pub fn count(&self, selector: &str) -> usize {
        self.eval(&format!("document.querySelectorAll({}).length", js_str(selector))).as_u64().unwrap_or(0) as usize
    }

    /// Set a form field's value (input, textarea or select), as a user would.
    pub fn set(&self, selector: &str, value: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.value = {}; \
             e.dispatchEvent(new Event('change', {{bubbles: true}})); return e.value === {}; }})()",
            js_str(selector),
            js_str(value),
            js_str(value)
        );
        assert_eq!(self.eval(&js), Value::Bool(true), "cannot set {selector} to {value:?} on {}", self.path());
    }

    /// Choose the option of a select whose text contains `label`.
    pub fn choose(&self, selector: &str, label: &str) {
        let js = format!(
            "(() => {{ const s = document.querySelector({}); if (!s) return null; \
             const o = Array.from(s.options).find(o => o.text.includes({})); if (!o) return null; \
             s.value = o.value; return o.value; }})()",
            js_str(selector),
            js_str(label)
        );
        let v = self.eval(&js);
        assert!(v.is_string(), "no option {label:?} in {selector} on {}:\n{}", self.path(), self.text());
    }

    pub fn check(&self, selector: &str) {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return false; e.checked = true; return true; }})()",
            js_str(selector)
        );
        assert_eq!(self.eval(&js), Value::Bool(true), "no check box {selector} on {}", self.path());
    }

    /// Click an element that loads a new page (a link or a form's button) and wait for it.
    pub fn click(&self, selector: &str) {
        // A page that follows running jobs reloads itself; pause that first so that the
        // click lands on the page that was read and its result is not replaced by a reload.
        if selector != "#pause-refresh" {
            for _ in 0..5 {
                if !self.exists("#pause-refresh") {
                    break;
                }
                self.click("#pause-refresh");
            }
        }
        assert!(self.exists(selector), "no {selector} on {}:\n{}", self.path(), self.text());
        let href = self.eval(&format!("document.querySelector({}).getAttribute('href')", js_str(selector)));
        self.eval("(window.__ferryOld = true)");
        self.eval(&format!("(document.querySelector({}).click(), true)", js_str(selector)));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let fresh =
                self.tab.evaluate("window.__ferryOld === undefined && document.readyState === 'complete'", false);
            if matches!(fresh, Ok(r) if r.value == Some(Value::Bool(true))) {
                break;
            }
            assert!(Instant::now() < deadline, "no new page after clicking {selector}");
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.on_error_page() {
            // A link is a GET and safe to repeat; a form post is not.
            let href = href.as_str().unwrap_or_else(|| panic!("the browser aborted the form post of {selector}"));
            self.goto(href);
        }
    }

    /// Reload `path` until its text contains `needle`.
    pub fn wait_for_text(&self, path: &str, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.goto(path);
            if self.text().contains(needle) {
                return;
            }
            assert!(Instant::now() < deadline, "{path} never showed {needle:?}; it shows:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(700));
        }
    }

    /// Reload `path` until `f` holds on the page.
    pub fn wait_until(&self, path: &str, what: &str, timeout: Duration, mut f: impl FnMut(&Portal) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.goto(path);
            if f(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what} on {path}:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(700));
        }
    }

    /// Sign in with a token through the log-in form.
    pub fn login(&self, token: &str) {
        self.goto("/portal/");
        assert!(self.path().starts_with("/portal/login"), "not signed in yet: {}", self.path());
        self.set("#token", token);
        self.click("#login");
    }

    /// Save a full-page PNG under target/portal-artifacts and return its path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let height = self.eval("document.documentElement.scrollHeight").as_u64().unwrap_or(1000).clamp(600, 6000);
        let clip = headless_chrome::protocol::cdp::Page::Viewport {
            x: 0.0,
            y: 0.0,
            width: 1400.0,
            height: height as f64,
            scale: 1.0,
        };
        let shot = self
            .tab
            .call_method(headless_chrome::protocol::cdp::Page::CaptureScreenshot {
                format: Some(CaptureScreenshotFormatOption::Png),
                quality: None,
                clip: Some(clip),
                from_surface: Some(true),
                capture_beyond_viewport: Some(true),
                optimize_for_speed: None,
            })
            .expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD.decode(shot.data).expect("screenshot data");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        println!("portal screenshot: {}", path.display());
        path
    }

    /// Fetch a portal URL from the page (with the session cookie) and return status and body.
    pub fn fetch(&self, path: &str) -> (u16, String, String) {
        let js = format!(
            "fetch({}, {{credentials: 'same-origin'}}).then(async r => [r.status, r.headers.get('content-disposition') || '', await r.text()])",
            js_str(path)
        );
        let v = self.eval_async(&js);
        (
            v[0].as_u64().unwrap_or(0) as u16,
            v[1].as_str().unwrap_or_default().to_string(),
            v[2].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Call the REST API from the page with a bearer token.
    pub fn api(&self, token: &str, path: &str) -> Value {
        let js = format!(
            "fetch({}, {{headers: {{Authorization: 'Bearer ' + {}}}}}).then(r => r.json())",
            js_str(path),
            js_str(token)
        );
        self.eval_async(&js)
    }
}

/// A JavaScript string literal.
pub fn js_str(s: &str) -> String {
    serde_json::to_string(s).expect("string")
}

/// The lab's admin token (Contributor).
pub fn admin_token(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir.join("vault").join("admin-token")).expect("admin token").trim().to_string()
}

/// A new token with `role`, made through the CLI.
pub fn token(lab: &Lab, name: &str, role: &str) -> String {
    let t = lab.json(&["token-create", "--name", name, "--role", role]);
    t["secret"].as_str().unwrap_or_else(|| panic!("no secret in {t}")).to_string()
}
