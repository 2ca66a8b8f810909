//! One HTTP request in one call, for tests that check the REST API, health and metrics: the
//! response (status, headers, body) or its body already read. A failed request panics, as any
//! broken expectation in a test does.

use reqwest::{IntoUrl, Response};
use serde_json::Value;

/// `GET url`.
pub async fn get(url: impl IntoUrl) -> Response {
    reqwest::get(url).await.expect("GET answered")
}

/// `GET url`, its body as text.
pub async fn get_text(url: impl IntoUrl) -> String {
    get(url).await.text().await.expect("a text body")
}

/// `GET url`, its body as JSON.
pub async fn get_json(url: impl IntoUrl) -> Value {
    get(url).await.json().await.expect("a JSON body")
}

/// `POST url` with a JSON body, and a bearer token when given.
pub async fn post_json(url: impl IntoUrl, bearer: Option<&str>, body: &Value) -> Response {
    let mut request = reqwest::Client::new().post(url).json(body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("POST answered")
}
