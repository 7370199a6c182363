//! HTTPS client for Ferry's APIs (vault, site manager, host agent).
//!
//! Every Ferry endpoint is served over TLS by a certificate of the vault's private CA; this
//! client trusts only that CA (never the system roots), optionally presents a client
//! certificate (mutual TLS between agents), sends a bearer token when it has one, and turns
//! error bodies into [`ferry_types::ApiError`].

use std::time::Duration;

use ferry_types::ApiError;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error body.
    #[error("{status}: {api}")]
    Api { status: u16, api: ApiError },
    /// The request did not get an answer (connection refused, TLS failure, timeout).
    #[error("Cannot reach {url}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The answer could not be read.
    #[error("Unexpected answer from {url}: {detail}")]
    Protocol { url: String, detail: String },
    /// The client could not be configured.
    #[error("Cannot configure the HTTPS client: {0}")]
    Config(String),
}

impl Error {
    /// The stable error code of an API error, if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { api, .. } => Some(&api.code),
            _ => None,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Proxy settings for reaching the vault (FAB-3).
#[derive(Debug, Clone, Default)]
pub struct Proxy {
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

pub struct Builder {
    base: String,
    ca_pem: Option<String>,
    identity: Option<(String, String)>,
    token: Option<String>,
    proxy: Option<Proxy>,
    timeout: Duration,
    insecure_bootstrap: bool,
    peer_name: Option<ferry_pki::PeerName>,
    revoked: Option<ferry_pki::Revocations>,
}

impl Client {
    pub fn builder(base: impl Into<String>) -> Builder {
        Builder {
            base: base.into(),
            ca_pem: None,
            identity: None,
            token: None,
            proxy: None,
            timeout: Duration::from_secs(90),
            insecure_bootstrap: false,
            peer_name: None,
            revoked: None,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base.trim_end_matches('/'), path)
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder, path: &str) -> Result<reqwest::Response> {
        let url = self.url(path);
        let resp = rb.send().await.map_err(|source| Error::Transport { url: url.clone(), source })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let api = serde_json::from_str::<ApiError>(&text)
            .unwrap_or_else(|_| ApiError::new("HttpError", format!("HTTP {status}: {text}")));
        Err(Error::Api { status: status.as_u16(), api })
    }

    async fn decode<T: DeserializeOwned>(&self, resp: reqwest::Response, path: &str) -> Result<T> {
        let bytes = resp.bytes().await.map_err(|source| Error::Transport { url: self.url(path), source })?;
        if bytes.is_empty() {
            return serde_json::from_str("null")
                .map_err(|e| Error::Protocol { url: self.url(path), detail: e.to_string() });
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol { url: self.url(path), detail: e.to_string() })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(self.req(reqwest::Method::GET, path), path).await?;
        self.decode(resp, path).await
    }

    pub async fn get_text(&self, path: &str) -> Result<String> {
        let resp = self.send(self.req(reqwest::Method::GET, path), path).await?;
        resp.text().await.map_err(|source| Error::Transport { url: self.url(path), source })
    }

    pub async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self.send(self.req(reqwest::Method::POST, path).json(body), path).await?;
        self.decode(resp, path).await
    }

    pub async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self.send(self.req(reqwest::Method::PUT, path).json(body), path).await?;
        self.decode(resp, path).await
    }

    /// PUT a change based on `version` (`If-Match`): a resource changed since is refused (412).
    pub async fn put_if_match<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        version: i64,
        body: &B,
    ) -> Result<T> {
        let rb = self.req(reqwest::Method::PUT, path).header("if-match", version.to_string()).json(body);
        let resp = self.send(rb, path).await?;
        self.decode(resp, path).await
    }

    pub async fn patch<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self.send(self.req(reqwest::Method::PATCH, path).json(body), path).await?;
        self.decode(resp, path).await
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value> {
        let resp = self.send(self.req(reqwest::Method::DELETE, path), path).await?;
        self.decode(resp, path).await
    }

    /// Send raw bytes (tests of malformed input).
    pub async fn post_raw(&self, path: &str, content_type: &str, body: Vec<u8>) -> Result<serde_json::Value> {
        let rb = self.req(reqwest::Method::POST, path).header("content-type", content_type).body(body);
        let resp = self.send(rb, path).await?;
        self.decode(resp, path).await
    }
}

impl Builder {
    /// Trust only this CA (PEM).
    pub fn ca(mut self, ca_pem: impl Into<String>) -> Self {
        self.ca_pem = Some(ca_pem.into());
        self
    }
    /// Present this client certificate (mutual TLS).
    pub fn identity(mut self, cert_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
    pub fn proxy(mut self, proxy: Option<Proxy>) -> Self {
        self.proxy = proxy;
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Accept the server only if its certificate (from the CA) carries this common name,
    /// whatever its address (Ferry agents: sites and hosts).
    pub fn peer_name(mut self, name: ferry_pki::PeerName) -> Self {
        self.peer_name = Some(name);
        self
    }
    /// With [`Self::peer_name`]: refuse a server presenting one of these certificates, whatever
    /// name it carries (SEC-1: a revoked agent certificate used by someone else).
    pub fn revoked(mut self, revoked: ferry_pki::Revocations) -> Self {
        self.revoked = Some(revoked);
        self
    }
    /// Accept any server certificate. Only for fetching a CA certificate whose fingerprint is
    /// then checked against a pin (registration bootstrap); never for anything else.
    pub fn insecure_for_pinned_bootstrap(mut self) -> Self {
        self.insecure_bootstrap = true;
        self
    }

    pub fn build(self) -> Result<Client> {
        // Ferry's servers close connections idle for 30 s; the pool lets them go before that, so
        // a request never goes out on a connection the server is closing.
        let mut b = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(20));
        if self.insecure_bootstrap {
            b = b.danger_accept_invalid_certs(true).tls_built_in_root_certs(false);
        } else {
            let ca = self.ca_pem.ok_or_else(|| Error::Config("a CA certificate is required".into()))?;
            let identity = self.identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
            let cfg = match self.peer_name {
                Some(name) => {
                    ferry_pki::named_server_client_config_revoking(&ca, identity, name, self.revoked.as_ref())
                }
                None => ferry_pki::client_config(&ca, identity),
            }
            .map_err(|e| Error::Config(e.to_string()))?;
            b = b.use_preconfigured_tls((*cfg).clone());
        }
        match &self.proxy {
            Some(p) => {
                let mut px =
                    reqwest::Proxy::all(&p.url).map_err(|e| Error::Config(format!("bad proxy {}: {e}", p.url)))?;
                if let Some(u) = &p.username {
                    px = px.basic_auth(u, p.password.as_deref().unwrap_or(""));
                }
                b = b.proxy(px);
            }
            None => b = b.no_proxy(),
        }
        let http = b.build().map_err(|e| Error::Config(e.to_string()))?;
        Ok(Client { http, base: self.base, token: self.token })
    }
}
