//! `flumen`: a command-line client for any Flumen server, what grpcurl is to gRPC.
//!
//! ```text
//! flumen list   ADDR                      the methods the server routes (its reflection)
//! flumen call   ADDR METHOD ['JSON']      one call; JSON in, the reply as JSON out
//! flumen watch  ADDR METHOD ['JSON']      a server stream, one JSON line per item
//! flumen health ADDR [SERVICE] [--watch]  the health service's status
//! ```
//!
//! ADDR is `HOST:PORT` (TCP; with `--tls` or `--quic` those) or `unix:PATH`. The server's
//! reflection service (`Router::with_reflection`) tells the codec and each method's
//! arguments; without it, `--codec` names the codec and the JSON is the request body as is.

mod command;
mod connect;
mod json;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "flumen",
    version,
    about = "Calls Flumen servers from the command line: list their methods, call them with \
             JSON, watch their streams, check their health.",
    after_help = "Exit status: 0 success; 1 the server answered with an error (or is not \
                  serving, or its reply is over --max-frame); 2 a bad request (JSON that does not fit, an unknown method, bad \
                  flags); 3 the connection failed (unreachable, not a Flumen server, TLS \
                  refused); 4 no reply before the timeout."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lists the services and methods the server routes, from its reflection service.
    List {
        #[command(flatten)]
        target: Target,
        /// Prints the description as JSON (for tools) instead of a listing.
        #[arg(long)]
        json: bool,
        /// How long the server may take to answer (default 10 s).
        #[arg(long, value_name = "DURATION", value_parser = duration)]
        timeout: Option<Duration>,
    },
    /// Calls METHOD with JSON arguments and prints the reply as JSON. A method taking a client
    /// stream reads its items from standard input, one JSON value per line; a method
    /// answering with a stream prints one JSON line per item.
    Call(CallArgs),
    /// Calls a server-streaming METHOD and prints each item as a line of JSON until the stream
    /// ends (no deadline unless --timeout sets one).
    Watch(CallArgs),
    /// Asks the server's health service for SERVICE's status (none: the server as a whole);
    /// exits 0 only while it is serving.
    Health {
        #[command(flatten)]
        target: Target,
        /// The service (as the server names it in its health statuses).
        #[arg(default_value = "")]
        service: String,
        /// Prints every change of the status until the server ends the stream.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        options: CallFlags,
    },
}

/// Where the server is and how to reach it.
#[derive(Debug, Args)]
struct Target {
    /// The server: HOST:PORT, or unix:PATH for a Unix socket.
    addr: String,
    /// TLS over TCP (needs --ca).
    #[arg(long)]
    tls: bool,
    /// QUIC (TLS 1.3; needs --ca).
    #[arg(long, conflicts_with = "tls")]
    quic: bool,
    /// The CA bundle (PEM) that signed the server's certificate.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: ADDR's host).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// A client certificate chain (PEM), for servers that require mutual TLS.
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// How long connecting (and the handshake) may take.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    connect_timeout: Duration,
    /// The largest reply accepted, in bytes. It is announced to the server, which answers a
    /// larger reply with an error; a larger frame from any other peer ends the connection, so
    /// no server can make this process hold more.
    #[arg(long, value_name = "BYTES", default_value_t = flumen::stream::frame::DEFAULT_MAX_FRAME_LEN)]
    max_frame: u32,
    /// The server's codec (msgpack, json, cbor), for servers without reflection; it
    /// overrides what reflection says.
    #[arg(long, value_name = "NAME")]
    codec: Option<String>,
}

/// Options of one call.
#[derive(Debug, Args)]
struct CallFlags {
    /// Metadata sent with the call, KEY=VALUE (repeat for more).
    #[arg(short = 'H', long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// The call's deadline, sent to the server (`250ms`, `5s`, `2m`). Default: 10 s for a
    /// call, none for a stream.
    #[arg(long, value_name = "DURATION", value_parser = duration)]
    timeout: Option<Duration>,
}

#[derive(Debug, Args)]
struct CallArgs {
    #[command(flatten)]
    target: Target,
    /// The method's wire name, such as `Kv.get` (see `flumen list`).
    method: String,
    /// The arguments as JSON: the value of a method's one argument, or all of them as an array
    /// or an object keyed by their names. For a raw method, the body's text.
    json: Option<String>,
    #[command(flatten)]
    options: CallFlags,
    /// A file whose bytes travel as the request's attachment (methods that take one).
    #[arg(long, value_name = "FILE")]
    attachment: Option<PathBuf>,
}

/// Why a command failed, each with its exit status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// The request cannot be made as given: flags, JSON, method. Exit 2.
    #[error("{0}")]
    Usage(String),
    /// The connection could not be made or broke. Exit 3.
    #[error("{0}")]
    Connection(String),
    /// No reply before the deadline. Exit 4.
    #[error("{0}")]
    Timeout(String),
    /// The server answered with an error, or is not serving. Exit 1.
    #[error("{0}")]
    Remote(String),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Self::Remote(_) => 1,
            Self::Usage(_) => 2,
            Self::Connection(_) => 3,
            Self::Timeout(_) => 4,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("flumen: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command::run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("flumen: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

/// A duration as `250ms`, `5s`, `2m`, `1h`, or a number of seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (such as 250ms, 5s, 2m)"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit {other:?} (ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(duration("1.5m"), Ok(Duration::from_secs(90)));
        assert!(duration("5 parsecs").is_err());
        assert!(duration("fast").is_err());
    }

    #[test]
    fn the_command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
