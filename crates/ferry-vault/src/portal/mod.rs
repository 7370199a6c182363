//! The web portal: the operator's view of the whole scenario, served by the vault under
//! `/portal` on its HTTPS listener.
//!
//! Pages are rendered on the server (maud, which escapes every interpolated value) from the same
//! handler functions the REST API runs, so the portal shows exactly what the API returns and
//! every change goes through the API's validation and role checks. Forms post back to the
//! portal; there is no script, and nothing is loaded from anywhere but the vault itself (the
//! style sheet is compiled into the binary), so the portal works on air-gapped sites.
//!
//! Log-in takes an API token. The session is an `HttpOnly`, `Secure`, `SameSite=Strict` cookie
//! holding the token; every form also carries a token derived from it (CSRF). What the token's
//! role may not do is not offered: a Reader sees no forms, an Operator sees failover-type
//! operations and job actions but no configuration changes. The API enforces the same roles.
//!
//! Pages: overview dashboard (JOB-4), Prepare infrastructure in the scenario's order (protection
//! goal, source, target, replication policy, network mapping, storage mapping), Replicate
//! applications, replicated items with their operations, recovery plans (groups, steps, edits
//! and operations), jobs (with the manual actions they wait for) and events.

mod capacity;
mod items;
mod jobs;
mod overview;
mod plans;
mod prepare;
mod replicate;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use ferry_types::auth::Role;
use ferry_types::protection::Health;
use ferry_types::vault::Vault;
use ferry_types::ApiError;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use sha2::{Digest, Sha256};

use crate::auth::{Auth, Principal};
use crate::error::ApiFailure;
use crate::state::AppState;

const SESSION_COOKIE: &str = "ferry_session";
const FLASH_COOKIE: &str = "ferry_flash";
const CSS: &str = include_str!("assets/portal.css");

/// The portal's routes (merged into the vault's router).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(|| async { redirect("/portal/") }))
        .route("/portal", get(|| async { redirect("/portal/") }))
        .route("/portal/", get(overview::vault_list).post(overview::create_vault))
        .route("/portal/login", get(login_page).post(login))
        .route("/portal/logout", post(logout))
        .route("/portal/assets/portal.css", get(css))
        .route("/portal/vaults/{vault}", get(overview::dashboard))
        .route("/portal/vaults/{vault}/prepare", get(prepare::show))
        .route("/portal/vaults/{vault}/prepare/goal", post(prepare::set_goal))
        .route("/portal/vaults/{vault}/prepare/keys", post(prepare::issue_key))
        .route("/portal/vaults/{vault}/prepare/keys/{key}/revoke", post(prepare::revoke_key))
        .route("/portal/vaults/{vault}/prepare/sync", post(prepare::cloud_sync))
        .route("/portal/vaults/{vault}/prepare/policies", post(prepare::create_policy))
        .route("/portal/vaults/{vault}/prepare/policies/{policy}", post(prepare::update_policy))
        .route("/portal/vaults/{vault}/prepare/pairs", post(prepare::associate))
        .route("/portal/vaults/{vault}/prepare/pairs/{pair}/delete", post(prepare::remove_pair))
        .route("/portal/vaults/{vault}/prepare/networks", post(prepare::map_network))
        .route("/portal/vaults/{vault}/prepare/networks/{mapping}/delete", post(prepare::unmap_network))
        .route("/portal/vaults/{vault}/prepare/storage", post(prepare::map_storage))
        .route("/portal/vaults/{vault}/prepare/storage/{mapping}/delete", post(prepare::unmap_storage))
        .route("/portal/vaults/{vault}/prepare/alerts", post(prepare::set_alerts))
        .route("/portal/vaults/{vault}/prepare/alerts/test", post(prepare::test_alerts))
        .route("/portal/vaults/{vault}/replicate", get(replicate::show).post(replicate::enable))
        .route("/portal/vaults/{vault}/capacity", get(capacity::list).post(capacity::create))
        .route("/portal/vaults/{vault}/capacity/{plan}", get(capacity::detail))
        .route("/portal/vaults/{vault}/capacity/{plan}/{action}", post(capacity::act))
        .route("/portal/vaults/{vault}/items", get(items::list))
        .route("/portal/vaults/{vault}/items/{item}", get(items::detail))
        .route("/portal/vaults/{vault}/items/{item}/{operation}", post(items::operate))
        .route("/portal/vaults/{vault}/jobs", get(jobs::list))
        .route("/portal/vaults/{vault}/jobs/export", get(jobs::export))
        .route("/portal/vaults/{vault}/jobs/{job}", get(jobs::detail))
        .route("/portal/vaults/{vault}/jobs/{job}/{action}", post(jobs::action))
        .route("/portal/vaults/{vault}/events", get(jobs::events))
        .route("/portal/vaults/{vault}/plans", get(plans::list).post(plans::create))
        .route("/portal/vaults/{vault}/plans/{plan}", get(plans::detail))
        .route("/portal/vaults/{vault}/plans/{plan}/edit", post(plans::edit))
        .route("/portal/vaults/{vault}/plans/{plan}/delete", post(plans::delete))
        .route("/portal/vaults/{vault}/plans/{plan}/run/{operation}", post(plans::operate))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Pages load nothing but the vault's own style sheet, run no script, post only to the vault and
/// are never framed; none is cached.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    if !h.contains_key(CACHE_CONTROL) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

async fn css() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8"), (CACHE_CONTROL, "max-age=3600")], CSS).into_response()
}

// ---------------------------------------------------------------------------------------------
// Session, CSRF, flash

/// The logged-in user of a portal request.
#[derive(Clone)]
pub struct User {
    pub auth: Auth,
    pub name: String,
    pub role: Role,
    /// The anti-forgery value every form of this session carries.
    pub csrf: String,
    /// A one-time notice from the previous request (shown once, then cleared).
    pub flash: Option<String>,
    /// The path and query of the page being shown.
    pub page: String,
    /// Pages that follow running jobs reload themselves unless the operator paused that
    /// (`refresh=off` in the query), e.g. to read a long job or fill in a form undisturbed.
    pub auto_refresh: bool,
}

impl User {
    pub fn can(&self, role: Role) -> bool {
        self.role.allows(role)
    }
}

fn csrf_of(secret: &str) -> String {
    hex::encode(Sha256::digest(format!("ferry-portal-csrf\0{secret}").as_bytes()))
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

fn pct_decode(s: &str) -> String {
    form_urlencoded::parse(format!("v={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

fn pct_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl FromRequestParts<AppState> for User {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let next = parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/portal/".into());
        let to_login = || {
            let mut r = redirect(&format!("/portal/login?next={}", pct_encode(&next)));
            r.headers_mut().append(SET_COOKIE, clear_cookie(SESSION_COOKIE));
            r
        };
        let Some(secret) = cookie(&parts.headers, SESSION_COOKIE).map(|s| pct_decode(&s)) else {
            return Err(to_login());
        };
        match crate::auth::authenticate(st, &secret).await {
            Ok(auth @ Auth(Principal::User { .. })) => {
                let Auth(Principal::User { ref name, role, .. }) = auth else { return Err(to_login()) };
                let name = name.clone();
                let flash = cookie(&parts.headers, FLASH_COOKIE).map(|f| pct_decode(&f)).filter(|f| !f.is_empty());
                let auto_refresh = !parts.uri.query().unwrap_or_default().split('&').any(|kv| kv == REFRESH_OFF);
                Ok(User { auth, name, role, csrf: csrf_of(&secret), flash, page: next, auto_refresh })
            }
            Ok(_) | Err(_) => Err(to_login()),
        }
    }
}

fn session_cookie(secret: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={}; Path=/portal; HttpOnly; Secure; SameSite=Strict",
        pct_encode(secret)
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn clear_cookie(name: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("{name}=; Path=/portal; Max-Age=0; HttpOnly; Secure; SameSite=Strict"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The query parameter that pauses a page's automatic reload.
const REFRESH_OFF: &str = "refresh=off";

/// `page` (path and query) with automatic reload paused (`off`) or resumed.
fn with_refresh(page: &str, off: bool) -> String {
    let (path, query) = page.split_once('?').unwrap_or((page, ""));
    let mut kept: Vec<&str> = query.split('&').filter(|kv| !kv.is_empty() && *kv != REFRESH_OFF).collect();
    if off {
        kept.push(REFRESH_OFF);
    }
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

/// A 303 redirect.
pub fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// A 303 redirect that shows `message` once on the next page.
pub fn redirect_with(to: &str, message: &str) -> Response {
    let mut r = redirect(to);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{FLASH_COOKIE}={}; Path=/portal; HttpOnly; Secure; SameSite=Strict",
        pct_encode(message)
    )) {
        r.headers_mut().append(SET_COOKIE, v);
    }
    r
}

/// Form fields of a POST, in order (repeated names allowed: check boxes).
pub struct Form(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        Ok(Form(form_urlencoded::parse(&bytes).into_owned().collect()))
    }
}

impl Form {
    /// A field's value, trimmed; absent and empty are the same.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim()).filter(|v| !v.is_empty())
    }
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
    }
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    /// Refuse a form that does not carry this session's anti-forgery value.
    pub fn check_csrf(&self, user: &User) -> Result<(), ApiFailure> {
        let given = self.get("csrf").unwrap_or_default();
        if subtle::ConstantTimeEq::ct_eq(given.as_bytes(), user.csrf.as_bytes()).into() {
            Ok(())
        } else {
            Err(ApiFailure::new(
                StatusCode::FORBIDDEN,
                "InvalidFormToken",
                "The form is not from this session; reload the page and try again",
            ))
        }
    }
}

/// The hidden anti-forgery field of a form.
pub fn csrf_field(user: &User) -> Markup {
    html! { input type="hidden" name="csrf" value=(user.csrf); }
}

// ---------------------------------------------------------------------------------------------
// Log-in

#[derive(serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(axum::extract::Query(q): axum::extract::Query<LoginQuery>) -> Response {
    login_form(q.next.as_deref(), None, StatusCode::OK)
}

fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/portal/") && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/portal/".to_string(),
    }
}

fn login_form(next: Option<&str>, error: Option<&str>, status: StatusCode) -> Response {
    let body = html! {
        main class="login" {
            h1 { "Ferry" }
            p class="muted" { "Site recovery for KVM/QEMU virtual machines" }
            @if let Some(e) = error { div class="notice error" id="login-error" { (e) } }
            form method="post" action="/portal/login" {
                input type="hidden" name="next" value=(safe_next(next));
                label for="token" { "API token" }
                input type="password" id="token" name="token" autocomplete="current-password" autofocus;
                p class="hint" {
                    "Any token of this vault server: the admin token is in the vault's data directory ("
                    code { "admin-token" } "); " code { "ferry token-create --role Reader|Operator|Contributor" }
                    " makes others."
                }
                button type="submit" id="login" { "Sign in" }
            }
        }
    };
    (status, axum::response::Html(document("Sign in", body, None).into_string())).into_response()
}

async fn login(
    axum::extract::State(st): axum::extract::State<AppState>,
    crate::auth::ClientAddress(from): crate::auth::ClientAddress,
    form: Form,
) -> Response {
    let next = safe_next(form.get("next"));
    let Some(secret) = form.get("token") else {
        return login_form(Some(&next), Some("Enter an API token"), StatusCode::BAD_REQUEST);
    };
    if let Err(e) = st.failed_auth.check(from) {
        return login_form(Some(&next), Some(&e.body.message), e.status);
    }
    let result = crate::auth::authenticate(&st, secret).await;
    if result.as_ref().is_err_and(|e| e.status == StatusCode::UNAUTHORIZED) {
        st.failed_auth.failed(from, secret);
    }
    match result {
        Ok(Auth(Principal::User { .. })) => {
            let mut r = redirect(&next);
            r.headers_mut().append(SET_COOKIE, session_cookie(secret));
            r
        }
        Ok(_) => login_form(Some(&next), Some("Site credentials cannot sign in to the portal"), StatusCode::FORBIDDEN),
        Err(e) => login_form(Some(&next), Some(&e.body.message), StatusCode::UNAUTHORIZED),
    }
}

async fn logout(user: User, form: Form) -> Response {
    if form.check_csrf(&user).is_err() {
        return redirect("/portal/");
    }
    let mut r = redirect("/portal/login");
    r.headers_mut().append(SET_COOKIE, clear_cookie(SESSION_COOKIE));
    r
}

// ---------------------------------------------------------------------------------------------
// Layout

/// Which navigation entry a page belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Prepare,
    Replicate,
    Items,
    Jobs,
    Events,
    Plans,
    Capacity,
    None,
}

/// A notice shown at the top of a page: success text or an API error with its details.
pub enum Notice {
    Ok(String),
    Error(ApiError),
}

impl From<ApiFailure> for Notice {
    fn from(e: ApiFailure) -> Self {
        Notice::Error(e.body)
    }
}

pub fn render_notice(n: &Notice) -> Markup {
    match n {
        Notice::Ok(text) => html! { div class="notice ok" id="notice" role="status" { (text) } },
        Notice::Error(e) => html! {
            div class="notice error" id="notice" role="alert" {
                strong class="code" { (e.code) } ": " span class="message" { (e.message) }
                @if !e.possible_causes.is_empty() {
                    div { "Possible causes:" ul { @for c in &e.possible_causes { li { (c) } } } }
                }
                @if let Some(r) = &e.recommendation { div { "Recommendation: " (r) } }
            }
        },
    }
}

fn document(title: &str, body: Markup, refresh: Option<u32>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = refresh { meta http-equiv="refresh" content=(s); }
                title { (title) " · Ferry" }
                link rel="stylesheet" href="/portal/assets/portal.css";
            }
            body { (body) }
        }
    }
}

/// What a page needs to render its frame.
pub struct Frame<'a> {
    pub user: &'a User,
    pub vault: Option<&'a Vault>,
    pub nav: Nav,
    pub title: &'a str,
    /// Reload the page every this many seconds (while jobs run).
    pub refresh: Option<u32>,
    pub notice: Option<Notice>,
}

/// A full page with the portal's header, navigation and notices.
pub fn page(f: Frame<'_>, content: Markup, status: StatusCode) -> Response {
    let base = f.vault.map(|v| format!("/portal/vaults/{}", v.id));
    let flash = f.user.flash.as_ref().map(|t| Notice::Ok(t.clone()));
    let entry = |nav: Nav, href: String, label: &str| {
        html! { a href=(href) class=@if f.nav == nav { "active" } @else { "" } { (label) } }
    };
    let body = html! {
        header class="top" {
            a class="brand" href="/portal/" { "Ferry" }
            @if let Some(v) = f.vault { span class="vault" title="Vault" { (v.name) } }
            span class="spacer" {}
            span class="who" id="who" { (f.user.name) " · " span id="role" { (f.user.role.as_str()) } }
            form method="post" action="/portal/logout" class="inline" {
                (csrf_field(f.user))
                button type="submit" class="link" id="logout" { "Sign out" }
            }
        }
        @if let Some(b) = &base {
            nav class="main" {
                (entry(Nav::Overview, b.clone(), "Overview"))
                (entry(Nav::Prepare, format!("{b}/prepare"), "Prepare infrastructure"))
                (entry(Nav::Replicate, format!("{b}/replicate"), "Replicate applications"))
                (entry(Nav::Items, format!("{b}/items"), "Replicated items"))
                (entry(Nav::Plans, format!("{b}/plans"), "Recovery plans"))
                (entry(Nav::Capacity, format!("{b}/capacity"), "Capacity planning"))
                (entry(Nav::Jobs, format!("{b}/jobs"), "Jobs"))
                (entry(Nav::Events, format!("{b}/events"), "Events"))
            }
        }
        main {
            h1 { (f.title) }
            @if let Some(every) = f.refresh {
                p class="hint" id="refresh" {
                    @if f.user.auto_refresh {
                        "Updates every " (every) " s while jobs run · "
                        a id="pause-refresh" href=(with_refresh(&f.user.page, true)) { "Pause updates" }
                    } @else {
                        "Updates paused · "
                        a id="resume-refresh" href=(with_refresh(&f.user.page, false)) { "Resume updates" }
                    }
                }
            }
            @if let Some(n) = &flash { (render_notice(n)) }
            @if let Some(n) = &f.notice { (render_notice(n)) }
            (content)
        }
    };
    let refresh = f.refresh.filter(|_| f.user.auto_refresh);
    let mut r = (status, axum::response::Html(document(f.title, body, refresh).into_string())).into_response();
    if f.user.flash.is_some() {
        r.headers_mut().append(SET_COOKIE, clear_cookie(FLASH_COOKIE));
    }
    r
}

/// A page-level failure: the API's error inside the frame (or a bare page without a vault).
pub fn error_page(user: &User, vault: Option<&Vault>, e: ApiFailure) -> Response {
    let status = e.status;
    page(
        Frame { user, vault, nav: Nav::None, title: "Something went wrong", refresh: None, notice: Some(e.into()) },
        html! { p { a href="/portal/" { "Back to the portal" } } },
        status,
    )
}

/// Turn a page handler's result into a response.
pub fn respond(user: &User, r: Result<Response, ApiFailure>) -> Response {
    r.unwrap_or_else(|e| error_page(user, None, e))
}

/// The vault of a portal URL.
pub async fn load_vault(st: &AppState, raw: &str) -> Result<Vault, ApiFailure> {
    Ok(st.vault(raw).await?.0)
}

// ---------------------------------------------------------------------------------------------
// Formatting helpers

pub fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn fmt_opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(fmt_time).unwrap_or_else(|| "—".into())
}

/// "12 s", "5 min", "3 h", "2 d".
pub fn fmt_age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

pub fn health_badge(h: Health) -> Markup {
    let (class, label) = match h {
        Health::Normal => ("ok", "Normal"),
        Health::Warning => ("warn", "Warning"),
        Health::Critical => ("crit", "Critical"),
        Health::NotApplicable => ("na", "Not applicable"),
    };
    html! { span class={ "badge " (class) } { (label) } }
}

/// `camelCase` or `PascalCase` to "Words in a sentence".
pub fn humanize(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push(' ');
            out.extend(c.to_lowercase());
        } else if i == 0 {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A query string from pairs (values percent-encoded).
pub fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        s.append_pair(k, v);
    }
    s.finish()
}

/// Markup from a trusted constant (no user data).
pub fn raw(s: &'static str) -> PreEscaped<&'static str> {
    PreEscaped(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sec_2_portal_escapes_api_text() {
        let e = ApiError::new("Bad<Code>", "name \"<script>alert(1)</script>\" & more");
        let out = render_notice(&Notice::Error(e)).into_string();
        assert!(!out.contains("<script>"), "{out}");
        assert!(out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{out}");
        assert!(out.contains("Bad&lt;Code&gt;"), "{out}");
        assert!(out.contains("&amp; more"), "{out}");
    }

    #[test]
    fn sec_2_portal_login_redirects_only_inside_the_portal() {
        assert_eq!(safe_next(Some("/portal/vaults/x/jobs?status=Failed")), "/portal/vaults/x/jobs?status=Failed");
        assert_eq!(safe_next(Some("https://elsewhere.example/")), "/portal/");
        assert_eq!(safe_next(Some("//elsewhere.example/portal/")), "/portal/");
        assert_eq!(safe_next(Some("/portal/\\elsewhere")), "/portal/");
        assert_eq!(safe_next(None), "/portal/");
    }

    #[test]
    fn portal_formats_and_cookies() {
        assert_eq!(humanize("testFailoverCleanup"), "Test failover cleanup");
        assert_eq!(humanize("WaitingForInput"), "Waiting for input");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(fmt_age(30), "30 s");
        assert_eq!(fmt_age(600), "10 min");
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_static("a=1; ferry_flash=Policy%20gold%20created; b=2"));
        assert_eq!(cookie(&h, FLASH_COOKIE).map(|v| pct_decode(&v)).as_deref(), Some("Policy gold created"));
        assert_eq!(pct_decode(&pct_encode("a b&c=d;é")), "a b&c=d;é");
        assert_eq!(query(&[("status", "Failed"), ("operation", ""), ("q", "a b")]), "status=Failed&q=a+b");
        assert_ne!(csrf_of("a"), csrf_of("b"));
    }

    #[test]
    fn job_4_pausing_updates_keeps_the_rest_of_the_query() {
        assert_eq!(with_refresh("/portal/vaults/v/jobs", true), "/portal/vaults/v/jobs?refresh=off");
        assert_eq!(
            with_refresh("/portal/vaults/v/jobs?status=Failed", true),
            "/portal/vaults/v/jobs?status=Failed&refresh=off"
        );
        assert_eq!(
            with_refresh("/portal/vaults/v/jobs?refresh=off&status=Failed", true),
            "/portal/vaults/v/jobs?status=Failed&refresh=off"
        );
        assert_eq!(
            with_refresh("/portal/vaults/v/jobs?refresh=off&status=Failed", false),
            "/portal/vaults/v/jobs?status=Failed"
        );
        assert_eq!(with_refresh("/portal/vaults/v/jobs?refresh=off", false), "/portal/vaults/v/jobs");
    }
}
