//! Errors as the API answers them: a status and a message that says what went wrong and what to
//! do, as `{"error": "..."}`; plus a JSON body extractor whose refusals are clear 400s.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use nonstop_accounts::AccountsError;
use serde::de::DeserializeOwned;

/// A refused or failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

/// The message of an error response, kept as a response extension so the audit can record it.
#[derive(Debug, Clone)]
pub struct ErrorMessage(pub String);

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!("{message}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        response.extensions_mut().insert(ErrorMessage(self.message));
        response
    }
}

impl From<AccountsError> for ApiError {
    fn from(e: AccountsError) -> ApiError {
        use AccountsError as E;
        match e {
            E::BadName(_)
            | E::BadService(_)
            | E::WeakPassword(_)
            | E::NoTotpEnrolment(_)
            | E::WrongTotp
            | E::AdminIsGlobal
            | E::GrantAboveRole { .. }
            | E::NoServices
            | E::AlreadyExpired => ApiError::bad_request(e.to_string()),
            E::UserExists(_) | E::TokenExists { .. } => ApiError::conflict(e.to_string()),
            E::NoSuchUser(_) => ApiError::not_found(e.to_string()),
            e => ApiError::internal(e.to_string()),
        }
    }
}

/// `Json<T>` whose every refusal (no JSON content type, bad syntax, wrong fields) is a 400 that
/// says what was wrong with the body.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(status, "the request body is too large");
    }
    let what = match rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "the body must be JSON with `Content-Type: application/json`".to_string()
        }
        JsonRejection::JsonSyntaxError(e) => format!("malformed JSON: {}", e.body_text()),
        JsonRejection::JsonDataError(e) => format!("unexpected JSON: {}", e.body_text()),
        other => format!("unreadable body: {}", other.body_text()),
    };
    ApiError::bad_request(what)
}

pub type ApiResult<T> = Result<T, ApiError>;
