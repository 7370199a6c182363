//! Request extractors whose rejections are Ferry errors (stable code, nothing changed).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::ApiFailure;

/// Largest accepted JSON body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A JSON body; malformed JSON, unknown fields and wrong types are `400 InvalidBody`.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rej) => Err(json_rejection(rej)),
        }
    }
}

fn json_rejection(rej: JsonRejection) -> ApiFailure {
    match rej {
        JsonRejection::MissingJsonContentType(_) => ApiFailure::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "The request body must be JSON (Content-Type: application/json)",
        ),
        JsonRejection::JsonSyntaxError(e) => {
            ApiFailure::bad_request("MalformedJson", format!("The request body is not valid JSON: {}", e.body_text()))
        }
        JsonRejection::JsonDataError(e) => ApiFailure::bad_request(
            "InvalidBody",
            format!("The request body does not match the expected shape: {}", e.body_text()),
        ),
        JsonRejection::BytesRejection(e) => ApiFailure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BodyTooLarge",
            format!("The request body could not be read: {}", e.body_text()),
        ),
        other => ApiFailure::bad_request("InvalidBody", other.body_text()),
    }
}

/// Query parameters; unknown or malformed ones are `400 InvalidQuery`.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiFailure::bad_request("InvalidQuery", e.body_text()))
            }
            Err(e) => Err(ApiFailure::bad_request("InvalidQuery", e.body_text())),
        }
    }
}

/// Parse a path id as a UUID with a clear error.
pub fn parse_id(what: &str, raw: &str) -> Result<Uuid, ApiFailure> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiFailure::bad_request("InvalidId", format!("{what} id '{raw}' is not a valid id")))
}

/// Page size and cursor, common to every list.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct PageParams {
    /// 1..=1000, default 100.
    pub limit: Option<i64>,
    /// Cursor returned as `next` by the previous page.
    pub cursor: Option<String>,
}

impl PageParams {
    pub fn limit(&self) -> Result<i64, ApiFailure> {
        match self.limit {
            None => Ok(100),
            Some(n) if (1..=1000).contains(&n) => Ok(n),
            Some(n) => Err(ApiFailure::bad_request("InvalidQuery", format!("limit {n} is out of range 1..=1000"))),
        }
    }

    pub fn numeric_cursor(&self) -> Result<Option<i64>, ApiFailure> {
        self.cursor
            .as_deref()
            .map(|c| {
                c.parse::<i64>()
                    .map_err(|_| ApiFailure::bad_request("InvalidQuery", format!("cursor '{c}' is not valid")))
            })
            .transpose()
    }
}
