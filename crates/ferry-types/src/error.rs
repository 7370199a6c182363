//! The error body every Ferry API returns, with a stable code (see `ferry errors`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A failed request or a failed job task, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiError {
    /// Stable machine-readable code, e.g. `RegistrationKeyExpired`.
    pub code: String,
    /// One sentence for humans.
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub possible_causes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<String>,
}

impl ApiError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code: code.into(), message: message.into(), possible_causes: Vec::new(), recommendation: None }
    }

    pub fn cause(mut self, cause: impl Into<String>) -> Self {
        self.possible_causes.push(cause.into());
        self
    }

    pub fn recommend(mut self, text: impl Into<String>) -> Self {
        self.recommendation = Some(text.into());
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}
