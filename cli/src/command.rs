//! The commands: what each asks the server and how it prints the answer.

use std::{io::Write, time::Duration};

use bytes::Bytes;
use flumen::{
    reflection::{self, MethodDescription, ServerDescription, Shape},
    stream::{CallError, CallOptions, Client, ErrorCode, Metadata, ReplyStream, StreamMode},
    MethodId, MsgPack,
};
use futures_lite::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{
    connect::connect,
    json::{self, Format},
    CallArgs, CallFlags, Command, Failure, Target,
};

/// A unary call's deadline when `--timeout` sets none.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `command`.
pub(crate) async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::List {
            target,
            json,
            timeout,
        } => list(&target, json, timeout).await,
        Command::Call(args) => call(args, false).await,
        Command::Watch(args) => call(args, true).await,
        Command::Health {
            target,
            service,
            watch,
            options,
        } => health(&target, &service, watch, &options).await,
    }
}

async fn list(target: &Target, as_json: bool, timeout: Option<Duration>) -> Result<(), Failure> {
    let client = connect(target).await?;
    let Some(description) = describe(&client, timeout).await? else {
        return Err(Failure::Usage(
            "the server does not serve reflection (Router::with_reflection), so its methods \
             cannot be listed; `flumen call` still works, with --codec"
                .into(),
        ));
    };
    let mut out = std::io::stdout().lock();
    let written = if as_json {
        serde_json::to_string_pretty(&description)
            .map_err(std::io::Error::from)
            .and_then(|text| writeln!(out, "{text}"))
    } else {
        write_listing(&mut out, &description)
    };
    written.map_err(|e| Failure::Usage(format!("cannot write the listing: {e}")))
}

/// The listing of `flumen list`: each service, then its methods with their signatures.
fn write_listing(out: &mut impl Write, description: &ServerDescription) -> std::io::Result<()> {
    writeln!(out, "codec: {}", description.codec)?;
    for service in description.services() {
        writeln!(
            out,
            "{}",
            if service.is_empty() {
                "(no service)"
            } else {
                service
            }
        )?;
        for method in description.methods.iter().filter(|m| m.service == service) {
            writeln!(out, "  {}", signature(method))?;
            for line in method.doc.lines() {
                writeln!(out, "      {line}")?;
            }
        }
    }
    Ok(())
}

/// `Kv.get(key: String) -> Option<Vec<u8>>  [idempotent]`, as `flumen list` shows a method.
fn signature(method: &MethodDescription) -> String {
    let args = match &method.args {
        Some(args) => {
            let args: Vec<_> = args
                .iter()
                .map(|a| format!("{}: {}", a.name, a.ty))
                .collect();
            format!("({})", args.join(", "))
        }
        None if method.raw => "(raw bytes)".to_owned(),
        None => format!("({})", method.request),
    };
    let items = method
        .request_item
        .as_ref()
        .map(|item| format!(" + stream of {item}"))
        .unwrap_or_default();
    let response = if method.raw && method.response == "bytes" {
        "raw bytes".to_owned()
    } else if method.shape.server_streams() {
        format!("stream of {}", method.response)
    } else {
        method.response.clone()
    };
    let error = method
        .error
        .as_ref()
        .map(|error| format!(" or error {error}"))
        .unwrap_or_default();
    let mut notes = Vec::new();
    if method.idempotent {
        notes.push("idempotent");
    }
    if method.request_attachment {
        notes.push("request attachment");
    }
    if method.reply_attachment {
        notes.push("reply attachment");
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!("  [{}]", notes.join(", "))
    };
    format!("{}{args}{items} -> {response}{error}{notes}", method.name)
}

/// The server's description, asked with `timeout` (default [`DEFAULT_CALL_TIMEOUT`]); `None`
/// if it does not serve reflection.
async fn describe(
    client: &Client,
    timeout: Option<Duration>,
) -> Result<Option<ServerDescription>, Failure> {
    let typed = flumen::Client::from_raw(client.clone(), MsgPack::default());
    let options = CallOptions::new().timeout(Some(timeout.unwrap_or(DEFAULT_CALL_TIMEOUT)));
    match reflection::describe_with_options(&typed, &options).await {
        Ok(description) => Ok(Some(description)),
        Err(e) if e.code() == Some(ErrorCode::UNKNOWN_METHOD) => Ok(None),
        Err(flumen::Error::Call(e)) => Err(call_failure(reflection::DESCRIBE, e)),
        Err(e) => Err(Failure::Connection(format!(
            "the server's reflection answer is not a description: {e}"
        ))),
    }
}

/// A call as the command line describes it, resolved against what the server says.
struct Plan {
    name: String,
    method: Option<MethodDescription>,
    format: Format,
    shape: Shape,
}

impl Plan {
    async fn new(
        client: &Client,
        target: &Target,
        name: &str,
        streams: bool,
        timeout: Option<Duration>,
    ) -> Result<Self, Failure> {
        let description = describe(client, timeout).await?;
        let method = match &description {
            Some(description) => Some(
                description
                    .method(name)
                    .cloned()
                    .ok_or_else(|| unknown_method(name, description))?,
            ),
            None => None,
        };
        let codec = match (&target.codec, &description) {
            (Some(codec), _) => codec.as_str(),
            (None, Some(description)) => description.codec.as_str(),
            (None, None) => "msgpack",
        };
        // A raw method needs no codec: a codec JSON cannot reach is an error only for the
        // others.
        let format = match Format::by_name(codec) {
            Ok(format) => format,
            Err(_) if method.as_ref().is_some_and(|m| m.raw) => Format::MsgPack(MsgPack::default()),
            Err(e) => return Err(e),
        };
        let shape = match &method {
            Some(method) => method.shape,
            None if streams => Shape::ServerStreaming,
            None => Shape::Unary,
        };
        if streams && !shape.server_streams() {
            return Err(Failure::Usage(format!(
                "{name} does not answer with a stream: use `flumen call`"
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            method,
            format,
            shape,
        })
    }

    fn raw(&self) -> bool {
        self.method.as_ref().is_some_and(|m| m.raw)
    }

    fn id(&self) -> u32 {
        MethodId::from_name(&self.name).as_u32()
    }

    /// The request body: the JSON shaped and encoded, the attachment after it.
    fn body(&self, input: Option<&str>, attachment: Option<Bytes>) -> Result<Bytes, Failure> {
        if self.raw() {
            return Ok(Bytes::copy_from_slice(input.unwrap_or("").as_bytes()));
        }
        let value = json::request(self.method.as_ref(), json::parse(input)?)?;
        let message = self.format.encode(&value).map_err(|e| {
            Failure::Usage(format!(
                "the request cannot be encoded as {}: {e}",
                self.name
            ))
        })?;
        if !self.method.as_ref().is_some_and(|m| m.request_attachment) {
            return Ok(message);
        }
        // The layout of a message with an attachment: its length (u32, little-endian), the
        // message, then the attachment's bytes.
        let attachment = attachment.unwrap_or_default();
        let length = u32::try_from(message.len())
            .map_err(|_| Failure::Usage("the request message is over 4 GiB".into()))?;
        let mut body = Vec::with_capacity(4 + message.len() + attachment.len());
        body.extend_from_slice(&length.to_le_bytes());
        body.extend_from_slice(&message);
        body.extend_from_slice(&attachment);
        Ok(body.into())
    }

    /// A reply body as JSON (a raw method's as its text).
    fn reply(&self, body: &[u8]) -> Result<Value, Failure> {
        if self.raw() {
            return Ok(Value::String(String::from_utf8_lossy(body).into_owned()));
        }
        let mut message = body;
        if self.method.as_ref().is_some_and(|m| m.reply_attachment) {
            let (length, rest) = body
                .split_first_chunk::<4>()
                .map(|(length, rest)| (u32::from_le_bytes(*length) as usize, rest))
                .filter(|(length, rest)| *length <= rest.len())
                .ok_or_else(|| {
                    Failure::Connection("the reply's attachment framing is malformed".into())
                })?;
            message = &rest[..length];
            eprintln!("(reply attachment: {} bytes)", rest.len() - length);
        }
        self.format.decode(message).map_err(|e| {
            Failure::Connection(format!(
                "the reply to {} cannot be read as {}: {e}",
                self.name,
                self.codec_name()
            ))
        })
    }

    fn codec_name(&self) -> &'static str {
        match self.format {
            Format::MsgPack(_) => "msgpack",
            Format::Json(_) => "json",
            Format::Cbor(_) => "cbor",
        }
    }

    /// The failure of a call the server answered with an error.
    fn failure(&self, error: CallError) -> Failure {
        if let CallError::Application(value) = &error {
            let shown = self
                .format
                .decode(value)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| String::from_utf8_lossy(value).into_owned());
            return Failure::Remote(format!("{} failed: application error: {shown}", self.name));
        }
        call_failure(&self.name, error)
    }
}

/// The failure of `method`'s call that ended with `error`.
fn call_failure(method: &str, error: CallError) -> Failure {
    match error {
        error if error.is_timeout() => {
            Failure::Timeout(format!("{method}: no reply before the deadline ({error})"))
        }
        CallError::Remote { code, message } if code == ErrorCode::RESPONSE_TOO_LARGE => {
            Failure::Remote(format!(
                "{method}: {message} (the limit is --max-frame; the server did not send it)"
            ))
        }
        CallError::Remote { code, message } if code == ErrorCode::UNKNOWN_METHOD => {
            Failure::Usage(format!("the server has no method {method:?}: {message}"))
        }
        CallError::Remote { code, message } if code == ErrorCode::BAD_REQUEST => Failure::Usage(
            format!("the server could not read the request as {method}'s arguments: {message}"),
        ),
        error @ CallError::RequestTooLarge { .. } => Failure::Usage(format!("{method}: {error}")),
        error if error.is_connection() => Failure::Connection(format!("{method}: {error}")),
        error => Failure::Remote(format!("{method} failed: {error}")),
    }
}

fn unknown_method(name: &str, description: &ServerDescription) -> Failure {
    let names: Vec<&str> = description
        .methods
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    Failure::Usage(format!(
        "the server has no method {name:?}; it routes: {}",
        names.join(", ")
    ))
}

/// The call options of the flags: deadline and metadata.
fn options(flags: &CallFlags, default_timeout: Option<Duration>) -> Result<CallOptions, Failure> {
    let mut metadata = Metadata::new();
    for entry in &flags.metadata {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(Failure::Usage(format!(
                "metadata {entry:?} is not KEY=VALUE"
            )));
        };
        metadata.insert(key, Bytes::copy_from_slice(value.as_bytes()));
    }
    let options = CallOptions::new().timeout(flags.timeout.or(default_timeout));
    if metadata.is_empty() {
        return Ok(options);
    }
    options
        .metadata(&metadata)
        .map_err(|e| Failure::Usage(format!("metadata: {e}")))
}

async fn call(args: CallArgs, watch: bool) -> Result<(), Failure> {
    let client = connect(&args.target).await?;
    let plan = Plan::new(
        &client,
        &args.target,
        &args.method,
        watch,
        args.options.timeout,
    )
    .await?;
    let attachment = match &args.attachment {
        Some(path) => Some(Bytes::from(std::fs::read(path).map_err(|e| {
            Failure::Usage(format!("attachment {}: {e}", path.display()))
        })?)),
        None => None,
    };
    let body = plan.body(args.json.as_deref(), attachment)?;
    let streams = plan.shape.server_streams() || plan.shape.client_streams();
    let options = options(&args.options, (!streams).then_some(DEFAULT_CALL_TIMEOUT))?;
    let mode = match plan.shape {
        Shape::ServerStreaming => StreamMode::ServerStreaming,
        Shape::ClientStreaming => StreamMode::ClientStreaming,
        Shape::Bidirectional => StreamMode::Bidirectional,
        _ => {
            let reply = client
                .call_with_options(plan.id(), body, &options)
                .await
                .map_err(|e| plan.failure(e))?;
            return print_pretty(&plan.reply(&reply)?);
        }
    };
    let (sender, replies) = client
        .open_stream(plan.id(), body, mode, &options)
        .await
        .map_err(|e| plan.failure(e))?;
    let sending = async {
        match sender {
            Some(sender) => send_stdin(&plan, sender).await,
            None => Ok(()),
        }
    };
    let receiving = receive(&plan, replies);
    // Both at once: a bidirectional server may answer before the client's stream ends.
    let (sent, received) = futures_lite::future::zip(sending, receiving).await;
    received.and(sent)
}

/// Sends standard input's lines as the call's items, each a JSON value.
async fn send_stdin(plan: &Plan, mut sender: flumen::stream::RequestSender) -> Result<(), Failure> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let item_type = plan.method.as_ref().and_then(|m| m.request_item.as_deref());
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| Failure::Usage(format!("reading standard input: {e}")))?
    {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).map_err(|e| {
            Failure::Usage(format!(
                "the stream item {line:?} is not valid JSON{}: {e}",
                item_type.map(|t| format!(" ({t})")).unwrap_or_default()
            ))
        })?;
        let item = plan
            .format
            .encode(&value)
            .map_err(|e| Failure::Usage(format!("the stream item cannot be encoded: {e}")))?;
        if sender.send(item).await.is_err() {
            // The call is over: its outcome comes through the replies.
            return Ok(());
        }
    }
    sender.finish().await;
    Ok(())
}

/// Prints the server's items as JSON lines, then its final reply if the method has one.
async fn receive(plan: &Plan, mut replies: ReplyStream) -> Result<(), Failure> {
    if !plan.shape.server_streams() {
        let reply = replies.response().await.map_err(|e| plan.failure(e))?;
        return print_pretty(&plan.reply(&reply)?);
    }
    while let Some(item) = replies.next().await {
        let item = item.map_err(|e| plan.failure(e))?;
        let value = plan.reply(&item)?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{value}")
            .and_then(|()| out.flush())
            .map_err(|e| Failure::Usage(format!("cannot write the reply: {e}")))?;
    }
    Ok(())
}

fn print_pretty(value: &Value) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    writeln!(std::io::stdout().lock(), "{text}")
        .map_err(|e| Failure::Usage(format!("cannot write the reply: {e}")))
}

async fn health(
    target: &Target,
    service: &str,
    watch: bool,
    flags: &CallFlags,
) -> Result<(), Failure> {
    let client = connect(target).await?;
    let method = if watch {
        "FlumenHealth.watch"
    } else {
        "FlumenHealth.check"
    };
    let plan = Plan::new(&client, target, method, watch, flags.timeout).await?;
    // Both methods take one argument, the service's name: the body is the tuple of it.
    let body = plan
        .format
        .encode(&Value::Array(vec![Value::String(service.to_owned())]))
        .map_err(|e| Failure::Usage(format!("the service name cannot be encoded: {e}")))?;
    let status = |value: Value| -> Result<(), Failure> {
        let status = value.as_str().unwrap_or("?").to_owned();
        println!("{status}");
        if status == "Serving" {
            Ok(())
        } else {
            Err(Failure::Remote(format!(
                "{:?} is {status}",
                if service.is_empty() {
                    "the server"
                } else {
                    service
                }
            )))
        }
    };
    if !watch {
        let options = options(flags, Some(DEFAULT_CALL_TIMEOUT))?;
        let reply = client
            .call_with_options(plan.id(), body, &options)
            .await
            .map_err(|e| plan.failure(e))?;
        return status(plan.reply(&reply)?);
    }
    let options = options(flags, None)?;
    let (_, mut replies) = client
        .open_stream(plan.id(), body, StreamMode::ServerStreaming, &options)
        .await
        .map_err(|e| plan.failure(e))?;
    let mut last = Err(Failure::Remote("the server sent no status".into()));
    while let Some(item) = replies.next().await {
        let item = item.map_err(|e| plan.failure(e))?;
        last = status(plan.reply(&item)?);
    }
    last
}
