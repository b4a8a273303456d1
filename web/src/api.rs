//! Every request the dashboard makes goes through this module.
//!
//! The server speaks GraphQL at `POST /graphql` on the same origin. Views never
//! build requests themselves: they call the typed functions here and get back
//! either plain data or an [`ApiError`] carrying the GraphQL error `message` and
//! `extensions.code`, so every failure is rendered the same way.

use std::fmt;

use gloo_net::http::Request;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const GRAPHQL_PATH: &str = "/graphql";

/// The error code the server uses when the bearer token is missing or rejected.
pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";

const HOME_QUERY: &str = "query Home { serverInfo { version } \
    pipelines(first: 100) { edges { node { id name provider repository } } } }";

/// Everything the home page shows, flattened out of the connection shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Home {
    pub version: String,
    pub pipelines: Vec<Pipeline>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Pipeline {
    pub id: String,
    pub name: String,
    /// A GraphQL enum value such as `GIT`; kept as a string so a provider added
    /// on the server does not break an older dashboard.
    pub provider: String,
    pub repository: String,
}

/// A failed request, shaped like a GraphQL error so the UI has one code path.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub message: String,
    pub code: Option<String>,
}

impl ApiError {
    fn new(message: impl Into<String>, code: &str) -> Self {
        Self {
            message: message.into(),
            code: Some(code.to_owned()),
        }
    }

    pub fn is_unauthenticated(&self) -> bool {
        self.code.as_deref() == Some(UNAUTHENTICATED)
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(f, "{} ({code})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ApiError {}

/// Loads the server version and the first page of pipelines.
pub async fn home(token: &str) -> Result<Home, ApiError> {
    let data: HomeData = graphql(token, HOME_QUERY, json!({})).await?;
    Ok(Home {
        version: data.server_info.version,
        pipelines: data
            .pipelines
            .edges
            .into_iter()
            .map(|edge| edge.node)
            .collect(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HomeData {
    server_info: ServerInfo,
    pipelines: Connection<Pipeline>,
}

#[derive(Deserialize)]
struct ServerInfo {
    version: String,
}

#[derive(Deserialize)]
struct Connection<T> {
    edges: Vec<Edge<T>>,
}

#[derive(Deserialize)]
struct Edge<T> {
    node: T,
}

#[derive(Serialize)]
struct GraphQlRequest<'a> {
    query: &'a str,
    variables: Value,
}

#[derive(Deserialize)]
struct GraphQlResponse<T> {
    data: Option<T>,
    #[serde(default)]
    errors: Vec<GraphQlError>,
}

#[derive(Deserialize)]
struct GraphQlError {
    message: String,
    #[serde(default)]
    extensions: Option<Extensions>,
}

#[derive(Deserialize)]
struct Extensions {
    code: Option<String>,
}

impl From<GraphQlError> for ApiError {
    fn from(error: GraphQlError) -> Self {
        Self {
            message: error.message,
            code: error.extensions.and_then(|ext| ext.code),
        }
    }
}

async fn graphql<T: DeserializeOwned>(
    token: &str,
    query: &str,
    variables: Value,
) -> Result<T, ApiError> {
    let request = Request::post(GRAPHQL_PATH)
        .header("Authorization", &format!("Bearer {token}"))
        .json(&GraphQlRequest { query, variables })
        .map_err(|err| ApiError::new(err.to_string(), "CLIENT_ERROR"))?;
    let response = request
        .send()
        .await
        .map_err(|err| ApiError::new(err.to_string(), "NETWORK_ERROR"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .map_err(|err| ApiError::new(err.to_string(), "NETWORK_ERROR"))?;

    // A GraphQL error body is more precise than the HTTP status, so it wins;
    // the status only matters when something in front of the server (a proxy,
    // an auth layer) answered with a body that is not GraphQL.
    match serde_json::from_str::<GraphQlResponse<T>>(&body) {
        Ok(parsed) => {
            if let Some(error) = parsed.errors.into_iter().next() {
                return Err(error.into());
            }
            parsed
                .data
                .ok_or_else(|| ApiError::new("the server returned no data", "BAD_RESPONSE"))
        }
        Err(_) if status == 401 => Err(ApiError::new("sign in to continue", UNAUTHENTICATED)),
        Err(_) if !(200..300).contains(&status) => Err(ApiError::new(
            format!("the server answered HTTP {status}"),
            "HTTP_ERROR",
        )),
        Err(err) => Err(ApiError::new(
            format!("could not read the server's answer: {err}"),
            "BAD_RESPONSE",
        )),
    }
}
