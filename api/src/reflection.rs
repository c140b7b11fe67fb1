//! A standard reflection service every server can mount ([`Router::with_reflection`]): the
//! methods a server routes, each with its shape (unary or which side streams), whether it is
//! idempotent, its arguments and the names of its request, reply and error types, and the
//! codec the server's methods speak. The `flumen` command line reads it to list a server's
//! methods and to turn JSON into requests.
//!
//! On the wire it is one unary method, `FlumenReflection.describe` ([`DESCRIBE`]): its request
//! body is ignored, and its reply is a [`ServerDescription`] encoded with MessagePack (structs as
//! maps) whatever codec the server's other methods use, so that a tool can read it before it
//! knows that codec.
//!
//! ```
//! use flumen::{reflection::{self, Shape}, rt::TokioRuntime, tcp::TokioTcp};
//! use flumen::{Client, Router, Server, Status};
//!
//! #[flumen::service]
//! trait Kv {
//!     /// The value under `key`.
//!     #[idempotent]
//!     async fn get(&self, key: String) -> Option<Vec<u8>>;
//! }
//! # struct Store;
//! # impl Kv for Store { async fn get(&self, _: String) -> Option<Vec<u8>> { None } }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = TokioRuntime::current();
//! let router = Router::new().service(KvServer::new(Store))?.with_reflection()?;
//! let server = Server::new(router).bind(&rt, &TokioTcp::default(), &"127.0.0.1:0".parse()?).await?;
//!
//! let client = Client::connect(&rt, &TokioTcp::default(), server.local_addr()).await?;
//! let description = reflection::describe(&client).await?;
//! assert_eq!(description.codec, "msgpack");
//! let get = description.method("Kv.get").expect("routed");
//! assert_eq!((get.shape, get.idempotent), (Shape::Unary, true));
//! assert_eq!(get.response, "Option<Vec<u8>>");
//! assert_eq!(get.doc, "The value under `key`.");
//! # Ok(()) }
//! ```
//!
//! [`Router::with_reflection`]: crate::Router::with_reflection

use std::{collections::BTreeMap, sync::Arc};

use bytes::Bytes;
use flumen_codec::{Codec, MsgPack};
use flumen_stream::{CallOptions, ErrorCode, Status};
use serde::{Deserialize, Serialize};

use crate::{Client, Error, MethodId};

/// The reflection method's wire name.
pub const DESCRIBE: &str = "FlumenReflection.describe";

/// What a server routes, as [`DESCRIBE`] answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ServerDescription {
    /// The codec of the server's methods ([`Codec::name`]: `"msgpack"`, `"json"`, ...).
    pub codec: String,
    /// Every routed method, sorted by name (the reflection method included).
    pub methods: Vec<MethodDescription>,
}

impl ServerDescription {
    /// The method named `name` (its wire name, such as `"Kv.get"`).
    pub fn method(&self, name: &str) -> Option<&MethodDescription> {
        self.methods.iter().find(|method| method.name == name)
    }

    /// The names of the services, sorted, without repeats (`""` for methods routed
    /// without one).
    pub fn services(&self) -> Vec<&str> {
        let mut services: Vec<&str> = self.methods.iter().map(|m| m.service.as_str()).collect();
        services.sort_unstable();
        services.dedup();
        services
    }
}

/// One routed method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MethodDescription {
    /// The wire name (`"Service.method"` for a service's methods), whose hash is the id.
    pub name: String,
    /// The service it belongs to; empty for a method routed on its own.
    pub service: String,
    /// The method id on the wire.
    pub id: u32,
    /// Which sides stream.
    pub shape: Shape,
    /// Declared `#[idempotent]`: it may run twice without harm.
    pub idempotent: bool,
    /// The request body is not encoded with the codec: raw bytes, passed to the handler
    /// untouched ([`Router::route_raw`](crate::Router::route_raw)).
    pub raw: bool,
    /// The named arguments of a service method, in order: the request body is then the tuple
    /// of their values (an array in the self-describing codecs). `None` for a method routed
    /// with [`Router::route`](crate::Router::route), whose body is one value of `request`.
    pub args: Option<Vec<Argument>>,
    /// The request body's type.
    pub request: String,
    /// The type of the client's stream items, for client-streaming and bidirectional methods.
    pub request_item: Option<String>,
    /// The reply's type, or the type of the items of the server's stream.
    pub response: String,
    /// The method's own error type, answered as an `APPLICATION` error, if it declares one.
    pub error: Option<String>,
    /// The request carries an [`Attachment`](crate::Attachment) after the message.
    pub request_attachment: bool,
    /// The reply carries an [`Attachment`](crate::Attachment) after the message.
    pub reply_attachment: bool,
    /// The method's documentation, as written on the trait.
    pub doc: String,
}

/// One argument of a service method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Argument {
    /// The parameter's name.
    pub name: String,
    /// Its type, as written.
    pub ty: String,
}

/// Which sides of a call stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Shape {
    /// One request, one reply.
    #[default]
    Unary,
    /// One request, a stream of replies.
    ServerStreaming,
    /// A stream of requests, one reply.
    ClientStreaming,
    /// Streams both ways.
    Bidirectional,
}

impl Shape {
    /// The server answers with a stream of items.
    pub fn server_streams(self) -> bool {
        matches!(self, Self::ServerStreaming | Self::Bidirectional)
    }

    /// The client sends a stream of items.
    pub fn client_streams(self) -> bool {
        matches!(self, Self::ClientStreaming | Self::Bidirectional)
    }
}

/// Asks the server behind `client` what it routes, with the client's default timeout.
///
/// # Errors
///
/// [`Error`]: the call failed (`UNKNOWN_METHOD` from a server that did not mount reflection),
/// or the reply was not a description.
pub async fn describe<C: Codec>(client: &Client<C>) -> Result<ServerDescription, Error> {
    describe_with_options(client, &CallOptions::new()).await
}

/// [`describe`] with `options` (a deadline, metadata).
///
/// # Errors
///
/// As [`describe`].
pub async fn describe_with_options<C: Codec>(
    client: &Client<C>,
    options: &CallOptions,
) -> Result<ServerDescription, Error> {
    let body = client
        .call_parts(
            MethodId::from_name(DESCRIBE),
            (Bytes::new(), Bytes::new()),
            options,
            Default::default(),
        )
        .await?;
    MsgPack::default().decode(&body).map_err(Error::Decode)
}

/// The descriptions of a router's methods, shared between the router (which adds to it as
/// methods are registered) and its reflection route (which reads it per call).
#[derive(Clone, Debug, Default)]
pub(crate) struct Catalog {
    inner: Arc<parking_lot::Mutex<CatalogInner>>,
}

#[derive(Debug, Default)]
struct CatalogInner {
    codec: &'static str,
    methods: BTreeMap<String, MethodDescription>,
}

impl Catalog {
    pub(crate) fn new(codec: &'static str) -> Self {
        let catalog = Self::default();
        catalog.inner.lock().codec = codec;
        catalog
    }

    /// Records a method just routed, knowing only what the router knows: its name and, for
    /// a typed route, its types. A service's registration then [`refine`](Self::refine)s it.
    pub(crate) fn add(&self, name: &str, request: Option<&str>, response: Option<&str>) {
        let service = name
            .rsplit_once('.')
            .map_or("", |(service, _)| service)
            .to_owned();
        let description = MethodDescription {
            name: name.to_owned(),
            service,
            id: MethodId::from_name(name).as_u32(),
            raw: request.is_none(),
            request: request.unwrap_or("bytes").to_owned(),
            response: response.unwrap_or("bytes").to_owned(),
            ..MethodDescription::default()
        };
        self.inner
            .lock()
            .methods
            .insert(name.to_owned(), description);
    }

    /// Replaces what [`add`](Self::add) guessed with what the service macro knows.
    pub(crate) fn refine(&self, spec: &MethodSpec) {
        let mut inner = self.inner.lock();
        let Some(description) = inner.methods.get_mut(spec.name) else {
            return;
        };
        let args = spec.args.iter().map(|(name, ty)| Argument {
            name: (*name).to_owned(),
            ty: short_type(ty),
        });
        let request = spec
            .args
            .iter()
            .map(|(_, ty)| short_type(ty))
            .collect::<Vec<_>>();
        let request = match request.as_slice() {
            [one] => format!("({one},)"),
            all => format!("({})", all.join(", ")),
        };
        *description = MethodDescription {
            name: spec.name.to_owned(),
            service: spec.service.to_owned(),
            id: description.id,
            shape: spec.shape,
            idempotent: spec.idempotent,
            raw: spec.raw,
            args: Some(args.collect()),
            request,
            request_item: spec.request_item.map(short_type),
            response: short_type(spec.response),
            error: spec.error.map(short_type),
            request_attachment: spec.request_attachment,
            reply_attachment: spec.reply_attachment,
            doc: spec.doc.to_owned(),
        };
    }

    /// The description served now.
    pub(crate) fn snapshot(&self) -> ServerDescription {
        let inner = self.inner.lock();
        ServerDescription {
            codec: inner.codec.to_owned(),
            methods: inner.methods.values().cloned().collect(),
        }
    }

    /// The reflection route's reply: the description in MessagePack, structs as maps so that
    /// readers of other versions skip the fields they do not know.
    pub(crate) fn reply(&self) -> Result<Bytes, Status> {
        MsgPack::default()
            .struct_maps(true)
            .encode(&self.snapshot())
            .map_err(|e| Status::new(ErrorCode::INTERNAL, e.to_string()))
    }
}

/// What `#[flumen::service]` knows of a method, as the generated registration passes it.
#[doc(hidden)]
#[derive(Debug)]
pub struct MethodSpec {
    /// The wire name.
    pub name: &'static str,
    /// The service's name.
    pub service: &'static str,
    /// Which sides stream.
    pub shape: Shape,
    /// Declared `#[idempotent]`.
    pub idempotent: bool,
    /// Each argument's name and type.
    pub args: &'static [(&'static str, &'static str)],
    /// The client's stream item type.
    pub request_item: Option<&'static str>,
    /// The reply type, or the reply stream's item type.
    pub response: &'static str,
    /// The method's error type.
    pub error: Option<&'static str>,
    /// A request attachment is declared.
    pub request_attachment: bool,
    /// The reply carries an attachment.
    pub reply_attachment: bool,
    /// The bodies bypass the codec.
    pub raw: bool,
    /// The documentation.
    pub doc: &'static str,
}

/// A type's name without module paths: `Vec<String>` for `alloc::vec::Vec<alloc::string::String>`,
/// `Item` for `crate::model::Item`.
pub(crate) fn short_type(full: &str) -> String {
    let mut short = String::with_capacity(full.len());
    let mut rest = full;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("::") {
            // Drop the path segment just written: back to the start of the identifier.
            let start = short
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                .map_or(0, |at| at + 1);
            short.truncate(start);
            rest = after;
        } else {
            let mut chars = rest.chars();
            if let Some(c) = chars.next() {
                short.push(c);
            }
            rest = chars.as_str();
        }
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get() -> MethodSpec {
        MethodSpec {
            name: "Kv.get",
            service: "Kv",
            shape: Shape::Unary,
            idempotent: true,
            args: &[("key", "String")],
            request_item: None,
            response: "Option<Vec<u8>>",
            error: None,
            request_attachment: false,
            reply_attachment: false,
            raw: false,
            doc: "The value.",
        }
    }

    /// PROTOCOL.md section 12's layout: each key, in order, with its type.
    #[derive(Serialize)]
    struct Documented {
        codec: &'static str,
        methods: [DocumentedMethod; 1],
    }

    #[derive(Serialize)]
    struct DocumentedMethod {
        name: &'static str,
        service: &'static str,
        id: u32,
        shape: &'static str,
        idempotent: bool,
        raw: bool,
        args: Option<[DocumentedArgument; 1]>,
        request: &'static str,
        request_item: Option<&'static str>,
        response: &'static str,
        error: Option<&'static str>,
        request_attachment: bool,
        reply_attachment: bool,
        doc: &'static str,
        /// Present only to show that a reader skips what it does not know.
        #[serde(skip_serializing_if = "Option::is_none")]
        later: Option<&'static str>,
    }

    #[derive(Serialize)]
    struct DocumentedArgument {
        name: &'static str,
        ty: &'static str,
    }

    fn documented(later: Option<&'static str>) -> Documented {
        Documented {
            codec: "msgpack",
            methods: [DocumentedMethod {
                name: "Kv.get",
                service: "Kv",
                id: MethodId::from_name("Kv.get").as_u32(),
                shape: "Unary",
                idempotent: true,
                raw: false,
                args: Some([DocumentedArgument {
                    name: "key",
                    ty: "String",
                }]),
                request: "(String,)",
                request_item: None,
                response: "Option<Vec<u8>>",
                error: None,
                request_attachment: false,
                reply_attachment: false,
                doc: "The value.",
                later,
            }],
        }
    }

    #[test]
    fn the_wire_layout_is_the_documented_one() {
        let catalog = Catalog::new("msgpack");
        catalog.add("Kv.get", None, None);
        catalog.refine(&get());
        let codec = MsgPack::default().struct_maps(true);
        assert_eq!(
            catalog.reply().unwrap(),
            codec.encode(&documented(None)).unwrap()
        );
    }

    /// A later version's extra fields are skipped, missing ones take their defaults.
    #[test]
    fn descriptions_of_other_versions_decode() {
        let codec = MsgPack::default().struct_maps(true);
        let body = codec.encode(&documented(Some("a later field"))).unwrap();
        let description: ServerDescription = MsgPack::default().decode(&body).unwrap();
        assert_eq!(description.methods[0].name, "Kv.get");
        assert!(description.methods[0].idempotent);

        #[derive(Serialize)]
        struct Earlier {
            name: &'static str,
        }
        let body = codec.encode(&("json", [Earlier { name: "a" }])).unwrap();
        let description: ServerDescription = MsgPack::default().decode(&body).unwrap();
        assert_eq!(description.methods[0].name, "a");
        assert_eq!(description.methods[0].shape, Shape::Unary);
    }

    #[test]
    fn paths_in_a_service_s_types_are_dropped() {
        let catalog = Catalog::new("msgpack");
        catalog.add("Kv.put", None, None);
        catalog.refine(&MethodSpec {
            name: "Kv.put",
            args: &[("item", "crate::model::Item")],
            response: "std::result::Result<(), super::Error>",
            ..get()
        });
        let put = catalog.snapshot().methods.remove(0);
        assert_eq!(put.args.unwrap()[0].ty, "Item");
        assert_eq!(put.request, "(Item,)");
        assert_eq!(put.response, "Result<(), Error>");
    }

    #[test]
    fn plain_routes_are_described_by_what_the_router_knows() {
        let catalog = Catalog::new("json");
        catalog.add("echo", None, None);
        catalog.add("Math.add", Some("(u8, u8)"), Some("u8"));
        let description = catalog.snapshot();
        assert_eq!(description.services(), ["", "Math"]);
        let echo = description.method("echo").unwrap();
        assert!(echo.raw && echo.args.is_none());
        let add = description.method("Math.add").unwrap();
        assert_eq!((add.raw, add.request.as_str()), (false, "(u8, u8)"));
    }
}
