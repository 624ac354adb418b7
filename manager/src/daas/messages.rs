//! `POST /v1/tenants/{t}/messages`: a JSON object (one message), a JSON array (one message per
//! element) or NDJSON (`application/x-ndjson`, one per line), read as it streams in and split
//! into messages without holding the body twice. Every message is checked (well-formed JSON,
//! the tenant's size limits) before any is produced, so a refused request produces nothing;
//! then the tenant's rate is taken and the messages produced, and 202 answers only once the
//! queue has acknowledged every one (Kafka `acks=all`; the embedded queue fsynced).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use serde::Serialize;

use super::{ApiError, ApiState, Refusal, auth, json_of};
use crate::coredms::TenantStorage;
use crate::stream::StreamLimits;

/// The longest the API waits for the queue's acknowledgement before it answers 503.
const PRODUCE_WAIT: Duration = Duration::from_secs(15);

/// When a client may try again after the queue was unavailable.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
}

/// Handles a message post. A refused request's remaining body is read and dropped (as for a
/// refused upload), so the client reads the refusal instead of a reset connection.
pub(super) async fn post(
    state: &ApiState,
    request: Request<Incoming>,
    tenant: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let (parts, mut body) = request.into_parts();
    let request = Request::from_parts(parts, ());
    let result = accept(state, &request, &mut body, tenant).await;
    if result.is_err() {
        tokio::spawn(super::upload::discard_rest(body));
    }
    result
}

async fn accept(
    state: &ApiState,
    request: &Request<()>,
    body: &mut Incoming,
    tenant: &str,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let tenants = state.tenants.current();
    let (tenant_id, tenant) = auth::tenant(&tenants, request.headers(), tenant)?;
    let limits = state.stream_config.limits(&tenant);
    if let Err(over) = state
        .usage
        .check_quota(&TenantStorage::of(&tenant_id, &tenant), tenant.max_memory_size)
        .await?
    {
        log::info!("messages refused: {over}");
        return Err(ApiError::new(
            Refusal::OverQuota,
            "There is not enough memory on the client disk for the messages.",
        )
        .retry_after(Duration::from_secs(60)));
    }
    state.rates.ready(&tenant_id, limits.max_messages_per_second)?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(size) = declared.filter(|&s| s > limits.max_request_bytes) {
        return Err(request_too_large(size, limits.max_request_bytes));
    }
    let format = match request
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default())
    {
        None => Format::Json,
        Some(t) => Format::of(t)?,
    };
    let mut parser = Parser::new(format, limits);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("the request broke off: {e}")))?;
        if let Ok(data) = frame.into_data() {
            parser.feed(&data)?;
        }
    }
    let messages = parser.finish()?;
    if messages.is_empty() {
        return Err(ApiError::bad_request("the request holds no message"));
    }
    state
        .rates
        .take(&tenant_id, limits.max_messages_per_second, messages.len())?;
    let count = messages.len();
    match tokio::time::timeout(PRODUCE_WAIT, state.queue.produce(&tenant_id, messages)).await {
        Ok(Ok(_)) => {
            state.stream.wake(&tenant_id);
            Ok(json_of(StatusCode::ACCEPTED, &Accepted { accepted: count }))
        }
        Ok(Err(e)) => {
            let error = ApiError::from(e);
            Err(match error.refusal {
                Refusal::Unavailable => error.retry_after(UNAVAILABLE_RETRY_AFTER),
                _ => error,
            })
        }
        Err(_) => Err(ApiError::new(
            Refusal::Unavailable,
            format!(
                "the queue did not acknowledge the messages within {} s; some may be stored: retrying is safe",
                PRODUCE_WAIT.as_secs()
            ),
        )
        .retry_after(UNAVAILABLE_RETRY_AFTER)),
    }
}

fn request_too_large(size: u64, max: u64) -> ApiError {
    ApiError::new(
        Refusal::TooLarge,
        format!("The request exceeds the maximum allowed size: {size}/{max}"),
    )
}

/// How the body holds its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// One JSON object, or an array of messages.
    Json,
    /// One message per line.
    Lines,
}

impl Format {
    /// The format of a `Content-Type` (its media type, parameters aside).
    fn of(content_type: &str) -> Result<Format, ApiError> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media.to_ascii_lowercase().as_str() {
            "application/json" => Ok(Format::Json),
            "application/x-ndjson" | "application/jsonl" | "application/jsonlines" => Ok(Format::Lines),
            _ => Err(ApiError::new(
                Refusal::UnsupportedMediaType,
                format!(
                    "messages are sent as application/json (an object or an array) or application/x-ndjson, not {content_type:?}"
                ),
            )),
        }
    }
}

/// Where the JSON parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first byte that is not white space.
    Start,
    /// One value makes the body (`{...}`).
    Single,
    /// Inside the array, between elements.
    Between,
    /// Inside an element of the array.
    Element,
    /// After the array's `]`.
    Done,
    /// Inside NDJSON.
    Lines,
}

/// Splits a body into messages as it comes.
struct Parser {
    limits: StreamLimits,
    stage: Stage,
    /// Bytes of the message being read.
    current: Vec<u8>,
    /// Where it began in the body (for messages).
    current_at: u64,
    /// Nesting depth inside an array element, and string state.
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Bytes read so far.
    at: u64,
    /// 1-based line of NDJSON being read.
    line: u64,
    messages: Vec<Vec<u8>>,
}

impl Parser {
    fn new(format: Format, limits: StreamLimits) -> Self {
        Parser {
            limits,
            stage: if format == Format::Lines {
                Stage::Lines
            } else {
                Stage::Start
            },
            current: Vec::new(),
            current_at: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            at: 0,
            line: 1,
            messages: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) -> Result<(), ApiError> {
        let total = self.at + data.len() as u64;
        if total > self.limits.max_request_bytes {
            return Err(request_too_large(total, self.limits.max_request_bytes));
        }
        for &byte in data {
            self.byte(byte)?;
            self.at += 1;
        }
        Ok(())
    }

    fn byte(&mut self, byte: u8) -> Result<(), ApiError> {
        match self.stage {
            Stage::Lines => {
                if byte == b'\n' {
                    self.end_message(Position::Line(self.line))?;
                    self.line += 1;
                } else {
                    self.push(byte)?;
                }
            }
            Stage::Start if byte.is_ascii_whitespace() => {}
            Stage::Start if byte == b'[' => self.stage = Stage::Between,
            Stage::Start => {
                self.stage = Stage::Single;
                self.current_at = self.at;
                self.push(byte)?;
            }
            Stage::Single => self.push(byte)?,
            Stage::Between if byte.is_ascii_whitespace() => {}
            Stage::Between if byte == b']' && self.messages.is_empty() => self.stage = Stage::Done,
            Stage::Between if byte == b',' || byte == b']' => {
                return Err(self.malformed("an element is missing"));
            }
            Stage::Between => {
                self.stage = Stage::Element;
                self.current_at = self.at;
                self.element_byte(byte)?;
            }
            Stage::Element => self.element_byte(byte)?,
            Stage::Done if byte.is_ascii_whitespace() => {}
            Stage::Done => return Err(self.malformed("there is more after the array's end")),
        }
        Ok(())
    }

    /// A byte of an array element: the element ends at a `,` or `]` outside any string or
    /// nesting.
    fn element_byte(&mut self, byte: u8) -> Result<(), ApiError> {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
            }
            return self.push(byte);
        }
        match byte {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' if self.depth > 0 => self.depth -= 1,
            b',' | b']' if self.depth == 0 => {
                let index = self.messages.len() as u64 + 1;
                self.end_message(Position::Element(index, self.current_at))?;
                self.stage = if byte == b']' { Stage::Done } else { Stage::Between };
                return Ok(());
            }
            _ => {}
        }
        self.push(byte)
    }

    fn push(&mut self, byte: u8) -> Result<(), ApiError> {
        if self.current.len() as u64 >= self.limits.max_message_bytes {
            return Err(ApiError::new(
                Refusal::TooLarge,
                format!(
                    "{}: a message is larger than the maximum allowed size of {} bytes (max_message_bytes)",
                    self.position().describe(self.current_at),
                    self.limits.max_message_bytes
                ),
            ));
        }
        if self.current.is_empty() && self.stage == Stage::Lines {
            self.current_at = self.at;
        }
        self.current.push(byte);
        Ok(())
    }

    /// The message read so far is complete: it must be well-formed JSON.
    fn end_message(&mut self, position: Position) -> Result<(), ApiError> {
        let message = std::mem::take(&mut self.current);
        let trimmed = message.trim_ascii();
        if trimmed.is_empty() {
            return match position {
                Position::Line(_) => Ok(()), // blank lines between messages
                _ => Err(self.malformed("an element is empty")),
            };
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(trimmed) {
            return Err(ApiError::bad_request(format!(
                "{position}: not valid JSON: {e}",
                position = position.describe(self.current_at)
            )));
        }
        let message = if trimmed.len() == message.len() {
            message
        } else {
            trimmed.to_vec()
        };
        self.messages.push(message);
        self.in_string = false;
        self.escaped = false;
        self.depth = 0;
        Ok(())
    }

    /// Where the message being read is.
    fn position(&self) -> Position {
        match self.stage {
            Stage::Lines => Position::Line(self.line),
            Stage::Element | Stage::Between => Position::Element(self.messages.len() as u64 + 1, self.current_at),
            _ => Position::Body,
        }
    }

    fn malformed(&self, what: &str) -> ApiError {
        ApiError::bad_request(format!("malformed JSON array at byte {}: {what}", self.at))
    }

    fn finish(mut self) -> Result<Vec<Vec<u8>>, ApiError> {
        match self.stage {
            Stage::Lines => self.end_message(Position::Line(self.line))?,
            Stage::Single => self.end_message(Position::Body)?,
            Stage::Start | Stage::Done => {}
            Stage::Between | Stage::Element => {
                return Err(self.malformed("the array does not end (no closing ])"));
            }
        }
        Ok(self.messages)
    }
}

/// Where a message is in the body, for an error.
#[derive(Debug, Clone, Copy)]
enum Position {
    Line(u64),
    Element(u64, u64),
    Body,
}

impl Position {
    fn describe(self, at: u64) -> String {
        match self {
            Position::Line(line) => format!("line {line} (byte {at})"),
            Position::Element(index, start) => format!("element {index} of the array (byte {start})"),
            Position::Body => "the body".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> StreamLimits {
        StreamLimits {
            max_message_bytes: 100,
            max_request_bytes: 10_000,
            max_messages_per_second: 1,
            min_instances: 0,
            max_instances: 1,
        }
    }

    fn parse(format: Format, body: &str, chunk: usize) -> Result<Vec<String>, ApiError> {
        let mut parser = Parser::new(format, limits());
        for part in body.as_bytes().chunks(chunk.max(1)) {
            parser.feed(part)?;
        }
        Ok(parser
            .finish()?
            .into_iter()
            .map(|m| String::from_utf8(m).unwrap())
            .collect())
    }

    #[test]
    fn objects_arrays_and_lines_split_into_messages_in_any_chunking() {
        for chunk in [1, 3, 1000] {
            assert_eq!(parse(Format::Json, " {\"a\": 1} ", chunk).unwrap(), ["{\"a\": 1}"]);
            assert_eq!(
                parse(Format::Json, "[{\"a\": \"x,]\"}, {\"b\": [1, {\"c\": 2}]},3 ]", chunk).unwrap(),
                ["{\"a\": \"x,]\"}", "{\"b\": [1, {\"c\": 2}]}", "3"]
            );
            assert_eq!(
                parse(Format::Lines, "{\"a\":1}\n\n{\"b\":\"\\\"}\\n\"}\r\n{\"c\":3}", chunk).unwrap(),
                ["{\"a\":1}", "{\"b\":\"\\\"}\\n\"}", "{\"c\":3}"]
            );
            assert!(parse(Format::Json, "[]", chunk).unwrap().is_empty());
        }
    }

    #[test]
    fn malformed_bodies_say_where() {
        let error = parse(Format::Lines, "{\"a\":1}\n{\"b\":}\n", 4).unwrap_err();
        assert_eq!(error.refusal, Refusal::BadRequest);
        assert!(
            error.message.starts_with("line 2 (byte 8): not valid JSON"),
            "{}",
            error.message
        );
        let error = parse(Format::Json, "[{\"a\":1}, {\"b\" 2}]", 4).unwrap_err();
        assert!(
            error.message.starts_with("element 2 of the array (byte 10)"),
            "{}",
            error.message
        );
        assert!(
            parse(Format::Json, "[1,,2]", 4)
                .unwrap_err()
                .message
                .contains("element is missing")
        );
        assert!(
            parse(Format::Json, "[1, 2", 4)
                .unwrap_err()
                .message
                .contains("does not end")
        );
        assert!(
            parse(Format::Json, "[1] x", 4)
                .unwrap_err()
                .message
                .contains("more after")
        );
        assert!(
            parse(Format::Json, "{\"a\": ", 4)
                .unwrap_err()
                .message
                .contains("the body")
        );
    }

    #[test]
    fn a_message_or_a_request_over_its_limit_is_too_large() {
        let big = format!("{{\"a\": \"{}\"}}", "x".repeat(200));
        let error = parse(Format::Json, &format!("[{big}]"), 7).unwrap_err();
        assert_eq!(error.refusal, Refusal::TooLarge);
        let many = "{\"a\":1}\n".repeat(2000);
        let error = parse(Format::Lines, &many, 512).unwrap_err();
        assert_eq!(error.refusal, Refusal::TooLarge);
        assert!(error.message.contains("10000"), "{}", error.message);
    }
}
