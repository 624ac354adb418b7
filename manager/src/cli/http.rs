//! A small HTTP client for the commands that talk to a running platform.

use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use futures_util::TryStreamExt;
use http_body_util::{BodyExt, Empty, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type Body = BoxBody<Bytes, std::io::Error>;

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(request: Request<Body>) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let uri = request.uri().clone();
    let response = client()
        .request(request)
        .await
        .with_context(|| format!("cannot reach {uri}: is the platform running?"))?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, body))
}

fn authorized(method: Method, url: &str, token: Option<&str>) -> hyper::http::request::Builder {
    let builder = Request::builder().method(method).uri(url);
    match token {
        Some(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    }
}

/// `GET url` with a bearer token.
pub async fn get_json(url: &str, token: Option<&str>) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let body: Body = Empty::new().map_err(|never| match never {}).boxed();
    send(authorized(Method::GET, url, token).body(body)?).await
}

/// `POST url` with the file as the body, calling `progress` with each chunk's size.
pub async fn post_file(
    url: &str,
    token: Option<&str>,
    path: &Path,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().await?.len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10).map_ok(move |chunk| {
        progress(chunk.len() as u64);
        Frame::data(chunk)
    });
    let body: Body = BodyExt::boxed(StreamBody::new(stream));
    let request = authorized(Method::POST, url, token)
        .header(header::CONTENT_LENGTH, size)
        .body(body)?;
    send(request).await
}
