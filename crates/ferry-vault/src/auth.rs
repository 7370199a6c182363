//! Bearer-token authentication and role checks (SEC-2).
//!
//! Tokens are random secrets; the store keeps their SHA-256. A token has a role (Reader,
//! Operator, Contributor) or is a site credential bound to one fabric. Every handler takes an
//! [`Auth`] and states the role it needs.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use ferry_types::auth::Role;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiFailure;
use crate::state::AppState;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    User { token: Uuid, name: String, role: Role },
    Site { fabric: Uuid },
}

#[derive(Debug, Clone)]
pub struct Auth(pub Principal);

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh random secret (URL-safe, 32 bytes of entropy).
pub fn new_secret(prefix: &str) -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl Auth {
    /// Require a user token with at least `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiFailure> {
        match &self.0 {
            Principal::User { role, .. } if role.allows(needed) => Ok(()),
            Principal::User { role, .. } => Err(ApiFailure::forbidden(format!(
                "This operation needs the {} role; the token has {}",
                needed.as_str(),
                role.as_str()
            ))),
            Principal::Site { .. } => Err(ApiFailure::forbidden("Site credentials cannot use the management API")),
        }
    }

    /// Require the site credential of `fabric`.
    pub fn require_site(&self) -> Result<Uuid, ApiFailure> {
        match &self.0 {
            Principal::Site { fabric } => Ok(*fabric),
            _ => Err(ApiFailure::forbidden("Only a registered site manager may call this endpoint")),
        }
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
            ApiFailure::unauthorized("MissingCredentials", "Send an Authorization: Bearer <token> header")
        })?;
        let value = header.to_str().map_err(|_| {
            ApiFailure::unauthorized("InvalidCredentials", "The Authorization header is not valid text")
        })?;
        let secret = value.strip_prefix("Bearer ").ok_or_else(|| {
            ApiFailure::unauthorized("InvalidCredentials", "The Authorization header must be 'Bearer <token>'")
        })?;
        let from = client_address(parts);
        state.failed_auth.check(from)?;
        authenticate(state, secret).await.inspect_err(|e| {
            if e.status == axum::http::StatusCode::UNAUTHORIZED {
                state.failed_auth.failed(from, secret);
            }
        })
    }
}

/// The address of the client that sent a request (when the server records it).
pub fn client_address(parts: &Parts) -> Option<std::net::IpAddr> {
    parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

/// A handler's view of [`client_address`].
#[derive(Debug, Clone, Copy)]
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddress(client_address(parts)))
    }
}

/// The principal a token secret stands for (the REST API's bearer token, the portal's session).
pub async fn authenticate(state: &AppState, secret: &str) -> Result<Auth, ApiFailure> {
    let row = state
        .store
        .token_by_hash(&hash_secret(secret.trim()))
        .await?
        .ok_or_else(|| ApiFailure::unauthorized("InvalidCredentials", "The token is unknown or revoked"))?;
    if let Some(expires) = row.expires_ms.filter(|e| *e <= state.clock.now().timestamp_millis()) {
        return Err(ApiFailure::unauthorized(
            "TokenExpired",
            format!(
                "The token {} expired at {}; create a new one",
                row.name,
                ferry_store::from_ms(expires).to_rfc3339()
            ),
        ));
    }
    if row.role == "Site" {
        let fabric = row.fabric.ok_or_else(|| ApiFailure::internal("Site credential without a fabric"))?;
        return Ok(Auth(Principal::Site { fabric }));
    }
    let role = Role::parse(&row.role)
        .ok_or_else(|| ApiFailure::internal(format!("Stored token has unknown role {}", row.role)))?;
    Ok(Auth(Principal::User { token: row.id, name: row.name, role }))
}
