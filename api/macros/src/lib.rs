//! `#[flumen::service]`: turns a trait of `async fn`s into a typed client, a server adapter and
//! stable method ids. Use it through the `flumen` crate; its documentation shows the expansion.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::{
    parse::{Parse, ParseStream},
    parse_macro_input,
    spanned::Spanned,
    Attribute, Error, FnArg, GenericArgument, Ident, ItemTrait, LitStr, Pat, Path, PathArguments,
    ReturnType, Token, TraitItem, TraitItemFn, Type, TypeParamBound,
};

/// Generates a typed client (`NameClient`), a server adapter (`NameServer`) and method ids from a
/// trait of `async fn`s. See the `flumen` crate's documentation.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as Args);
    let item = parse_macro_input!(item as ItemTrait);
    expand(args, item)
        .unwrap_or_else(Error::into_compile_error)
        .into()
}

/// `#[service]` or `#[service(crate = "path::to::flumen")]`.
struct Args {
    krate: Option<Path>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.is_empty() {
            return Ok(Self { krate: None });
        }
        input.parse::<Token![crate]>()?;
        input.parse::<Token![=]>()?;
        let path: LitStr = input.parse()?;
        Ok(Self {
            krate: Some(path.parse()?),
        })
    }
}

/// The path of the `flumen` crate as the caller's crate names it.
fn krate(args: &Args) -> TokenStream2 {
    if let Some(path) = &args.krate {
        return quote!(#path);
    }
    match proc_macro_crate::crate_name("flumen") {
        Ok(proc_macro_crate::FoundCrate::Name(name)) => {
            let name = Ident::new(&name, Span::call_site());
            quote!(::#name)
        }
        // Inside flumen's own tests and examples the crate is reachable by its name.
        Ok(proc_macro_crate::FoundCrate::Itself) | Err(_) => quote!(::flumen),
    }
}

/// What a method returns: one value (`T` or `Result<T, E>`), or with `stream` set, a stream of
/// such items (`impl Stream<Item = T>` or `Item = Result<T, E>`).
struct Output {
    ok: Type,
    err: Option<Type>,
    /// The declared item type of a streaming method.
    stream: Option<Box<Type>>,
}

struct Method {
    name: Ident,
    docs: Vec<Attribute>,
    /// The `Context` parameter, if declared.
    context: Option<(Pat, Type)>,
    /// The message arguments, in order.
    args: Vec<(Ident, Type)>,
    /// The client's stream: its parameter name and item type.
    stream_in: Option<(Ident, Type)>,
    /// The request's attachment parameter.
    attachment: Option<Ident>,
    output: Output,
    /// Declared `#[idempotent]`: safe to run twice, so a balanced client may retry it after
    /// a connection broke mid-call.
    idempotent: bool,
}

impl Method {
    /// Whether the reply carries an attachment (`WithAttachment<T>`).
    fn reply_attached(&self) -> bool {
        self.output.stream.is_none()
            && last_segment(&self.output.ok).is_some_and(|s| s.ident == "WithAttachment")
    }
}

fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    }
}

/// The type arguments of `Name<A, B>`.
fn type_args(segment: &syn::PathSegment) -> Vec<&Type> {
    match &segment.arguments {
        PathArguments::AngleBracketed(args) => args
            .args
            .iter()
            .filter_map(|arg| match arg {
                GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `Result<T, E>` as `(T, Some(E))`, anything else as `(ty, None)`.
fn split_result(ty: &Type) -> (Type, Option<Type>) {
    if let Some(segment) = last_segment(ty) {
        if segment.ident == "Result" {
            if let [ok, err] = type_args(segment)[..] {
                return (ok.clone(), Some(err.clone()));
            }
        }
    }
    (ty.clone(), None)
}

fn parse_output(output: &ReturnType) -> syn::Result<Output> {
    let ty = match output {
        ReturnType::Default => {
            return Ok(Output {
                ok: syn::parse_quote!(()),
                err: None,
                stream: None,
            })
        }
        ReturnType::Type(_, ty) => ty,
    };
    if let Type::ImplTrait(imp) = &**ty {
        for bound in &imp.bounds {
            let TypeParamBound::Trait(trait_bound) = bound else {
                continue;
            };
            let Some(segment) = trait_bound.path.segments.last() else {
                continue;
            };
            if segment.ident != "Stream" {
                continue;
            }
            if let PathArguments::AngleBracketed(args) = &segment.arguments {
                for arg in &args.args {
                    if let GenericArgument::AssocType(assoc) = arg {
                        if assoc.ident == "Item" {
                            let (ok, err) = split_result(&assoc.ty);
                            return Ok(Output {
                                ok,
                                err,
                                stream: Some(Box::new(assoc.ty.clone())),
                            });
                        }
                    }
                }
            }
        }
        return Err(Error::new(
            ty.span(),
            "a streaming method returns `impl Stream<Item = Result<T, E>>` (or `Item = T`)",
        ));
    }
    let (ok, err) = split_result(ty);
    Ok(Output {
        ok,
        err,
        stream: None,
    })
}

fn contains_reference(ty: &Type) -> bool {
    match ty {
        Type::Reference(_) => true,
        Type::Path(path) => path
            .path
            .segments
            .iter()
            .any(|segment| type_args(segment).into_iter().any(contains_reference)),
        Type::Tuple(tuple) => tuple.elems.iter().any(contains_reference),
        Type::Array(array) => contains_reference(&array.elem),
        Type::Slice(_) => true,
        Type::Paren(inner) => contains_reference(&inner.elem),
        Type::Group(inner) => contains_reference(&inner.elem),
        _ => false,
    }
}

fn parse_method(method: &TraitItemFn) -> syn::Result<Method> {
    let sig = &method.sig;
    if sig.asyncness.is_none() {
        return Err(Error::new(
            sig.fn_token.span(),
            "service methods must be `async fn`: every call is awaited",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(Error::new(
            sig.generics.span(),
            "service methods cannot be generic: client and server must agree on each type",
        ));
    }
    if let Some(body) = &method.default {
        return Err(Error::new(
            body.span(),
            "service methods cannot have a default body",
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        _ => {
            return Err(Error::new(
                sig.ident.span(),
                "service methods take `&self`: one server handles many calls at once",
            ))
        }
    }
    let mut context = None;
    let mut args = Vec::new();
    let mut stream_in = None;
    let mut attachment = None;
    let count = sig.inputs.len() - 1;
    for (index, input) in inputs.enumerate() {
        let FnArg::Typed(typed) = input else {
            return Err(Error::new(input.span(), "unexpected receiver"));
        };
        let ty = &*typed.ty;
        if contains_reference(ty) {
            return Err(Error::new(
                ty.span(),
                "service method arguments are decoded from the request, so they must be owned \
                 (use `String` for `&str`, `Vec<T>` for `&[T]`)",
            ));
        }
        let segment = last_segment(ty);
        if index == 0 && segment.is_some_and(|s| s.ident == "Context") {
            context = Some(((*typed.pat).clone(), ty.clone()));
            continue;
        }
        let Pat::Ident(pat) = &*typed.pat else {
            return Err(Error::new(
                typed.pat.span(),
                "service method arguments must be plain names",
            ));
        };
        if let Some(segment) = segment.filter(|s| s.ident == "Streaming") {
            if index + 1 != count {
                return Err(Error::new(
                    ty.span(),
                    "the `Streaming` argument must be the method's last",
                ));
            }
            let [item] = type_args(segment)[..] else {
                return Err(Error::new(ty.span(), "expected `Streaming<T>`"));
            };
            stream_in = Some((pat.ident.clone(), item.clone()));
            continue;
        }
        if segment.is_some_and(|s| s.ident == "Attachment") {
            if index + 1 != count {
                return Err(Error::new(
                    ty.span(),
                    "the `Attachment` argument must be the method's last",
                ));
            }
            attachment = Some(pat.ident.clone());
            continue;
        }
        args.push((pat.ident.clone(), ty.clone()));
    }
    let output = parse_output(&sig.output)?;
    let mut idempotent = false;
    for attr in method
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("idempotent"))
    {
        attr.meta.require_path_only()?;
        idempotent = true;
    }
    if attachment.is_some() && (stream_in.is_some() || output.stream.is_some()) {
        return Err(Error::new(
            sig.ident.span(),
            "attachments are for unary methods: a streaming method sends raw bytes as items",
        ));
    }
    Ok(Method {
        name: sig.ident.clone(),
        docs: method
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect(),
        context,
        args,
        stream_in,
        attachment,
        output,
        idempotent,
    })
}

fn expand(args: Args, item: ItemTrait) -> syn::Result<TokenStream2> {
    let krate = krate(&args);
    if !item.generics.params.is_empty() {
        return Err(Error::new(
            item.generics.span(),
            "service traits cannot be generic",
        ));
    }
    let mut methods = Vec::new();
    for trait_item in &item.items {
        match trait_item {
            TraitItem::Fn(method) => methods.push(parse_method(method)?),
            other => {
                return Err(Error::new(
                    other.span(),
                    "a service trait holds only `async fn` methods",
                ))
            }
        }
    }
    let service = &item.ident;
    let vis = &item.vis;
    let service_name = service.to_string();
    let client = format_ident!("{}Client", service);
    let server = format_ident!("{}Server", service);
    let trait_docs: Vec<_> = item
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let other_attrs: Vec<_> = item
        .attrs
        .iter()
        .filter(|a| !a.path().is_ident("doc"))
        .collect();
    let supertraits = &item.supertraits;
    let plus = (!supertraits.is_empty()).then(|| quote!(+));

    let mut trait_fns = Vec::new();
    let mut client_fns = Vec::new();
    let mut registrations = Vec::new();
    let mut id_consts = Vec::new();
    let mut id_names = Vec::new();
    for method in &methods {
        let name = &method.name;
        let docs = &method.docs;
        let wire_name = format!("{service_name}.{name}");
        let id_const = format_ident!("{}", name.to_string().to_uppercase());
        id_consts.push(quote! {
            #[doc = ::core::concat!("Method id of `", #wire_name, "`.")]
            pub const #id_const: #krate::MethodId = #krate::MethodId::from_name(#wire_name);
        });
        id_names.push(id_const.clone());

        // The trait method, as implementors write it.
        let context_param = method.context.as_ref().map(|(pat, ty)| quote!(#pat: #ty,));
        let arg_params = method.args.iter().map(|(arg, ty)| quote!(#arg: #ty));
        let stream_param = method
            .stream_in
            .as_ref()
            .map(|(arg, item)| quote!(#arg: #krate::Streaming<#item>));
        let attachment_param = method
            .attachment
            .as_ref()
            .map(|arg| quote!(#arg: #krate::Attachment));
        let params: Vec<_> = arg_params
            .chain(stream_param)
            .chain(attachment_param)
            .collect();
        let returns = match &method.output {
            Output {
                stream: Some(item), ..
            } => quote!(#krate::BoxStream<#item>),
            Output {
                ok, err: Some(err), ..
            } => quote!(::core::result::Result<#ok, #err>),
            Output { ok, err: None, .. } => quote!(#ok),
        };
        trait_fns.push(quote! {
            #(#docs)*
            fn #name(&self, #context_param #(#params),*)
                -> impl ::core::future::Future<Output = #returns> + ::core::marker::Send;
        });

        // The client method.
        let arg_names: Vec<_> = method.args.iter().map(|(arg, _)| arg).collect();
        let arg_types: Vec<_> = method.args.iter().map(|(_, ty)| ty).collect();
        let Output { ok, err, .. } = &method.output;
        let err = err
            .as_ref()
            .map_or_else(|| quote!(#krate::NoError), |err| quote!(#err));
        let call_doc = format!(
            "Calls `{wire_name}` with this client's timeout and metadata.\n\n\
             Fails with the method's own error (`RpcError::Method`) or a framework error \
             (`RpcError::Rpc`)."
        );
        let client_params: Vec<_> = method
            .args
            .iter()
            .map(|(arg, ty)| quote!(#arg: #ty))
            .collect();
        let message = quote!(&(#(#arg_names,)*));
        let idempotent = method.idempotent;
        let route = quote! {
            #krate::__private::Route { idempotent: #idempotent, affinity: self.affinity }
        };
        let attached = method.attachment.is_some() || method.reply_attached();
        match (&method.stream_in, method.output.stream.is_some()) {
            (None, false) if attached => {
                let (attachment_param, attachment_arg) = match &method.attachment {
                    Some(arg) => (
                        Some(quote!(#arg: #krate::Attachment,)),
                        quote!(::core::option::Option::Some(#arg)),
                    ),
                    None => (None, quote!(::core::option::Option::None)),
                };
                let decode = if method.reply_attached() {
                    quote!(#krate::__private::detach_reply)
                } else {
                    quote!(#krate::__private::decode_reply)
                };
                client_fns.push(quote! {
                    #(#docs)*
                    #[doc = ""]
                    #[doc = #call_doc]
                    pub async fn #name(&self, #(#client_params,)* #attachment_param)
                        -> ::core::result::Result<#ok, #krate::RpcError<#err>>
                    {
                        let body = #krate::__private::call_attached::<_, #err, C>(
                            &self.client, &self.options, #client::#id_const, #route, #message, #attachment_arg,
                        ).await?;
                        #decode(self.client.codec(), body)
                    }
                });
            }
            (None, false) => {
                let blocking = format_ident!("{}_blocking", name);
                let blocking_doc = format!(
                    "[`{name}`](Self::{name}) from a plain thread (no runtime needed); \
                     blocks until the call resolves."
                );
                client_fns.push(quote! {
                    #(#docs)*
                    #[doc = ""]
                    #[doc = #call_doc]
                    pub async fn #name(&self, #(#client_params),*)
                        -> ::core::result::Result<#ok, #krate::RpcError<#err>>
                    {
                        #krate::__private::call(&self.client, &self.options, #client::#id_const, #route, #message).await
                    }

                    #[doc = #blocking_doc]
                    pub fn #blocking(&self, #(#client_params),*)
                        -> ::core::result::Result<#ok, #krate::RpcError<#err>>
                    {
                        #krate::__private::call_blocking(&self.client, &self.options, #client::#id_const, #route, #message)
                    }
                });
            }
            (None, true) => client_fns.push(quote! {
                #(#docs)*
                #[doc = ""]
                #[doc = #call_doc]
                pub async fn #name(&self, #(#client_params),*)
                    -> ::core::result::Result<#krate::ReplyItems<#ok, #err, C>, #krate::RpcError<#err>>
                {
                    #krate::__private::server_stream(&self.client, &self.options, #client::#id_const, #route, #message).await
                }
            }),
            (Some((items, item)), false) => client_fns.push(quote! {
                #(#docs)*
                #[doc = ""]
                #[doc = #call_doc]
                pub async fn #name(
                    &self,
                    #(#client_params,)*
                    #items: impl #krate::__private::Stream<Item = #item> + ::core::marker::Send + 'static,
                ) -> ::core::result::Result<#ok, #krate::RpcError<#err>>
                {
                    #krate::__private::client_stream(&self.client, &self.options, #client::#id_const, #route, #message, #items).await
                }
            }),
            (Some((items, item)), true) => client_fns.push(quote! {
                #(#docs)*
                #[doc = ""]
                #[doc = #call_doc]
                #[doc = ""]
                #[doc = "Your items are sent as you poll the returned stream."]
                pub async fn #name(
                    &self,
                    #(#client_params,)*
                    #items: impl #krate::__private::Stream<Item = #item> + ::core::marker::Send + 'static,
                ) -> ::core::result::Result<#krate::ReplyItems<#ok, #err, C>, #krate::RpcError<#err>>
                {
                    #krate::__private::bidi_stream(&self.client, &self.options, #client::#id_const, #route, #message, #items).await
                }
            }),
        }

        // The server registration.
        let context_arg = method.context.as_ref().map(|_| quote!(__flumen_context,));
        let args_pattern = quote!((#(#arg_names,)*): (#(#arg_types,)*));
        let span = name.span();
        let has_error = method.output.err.is_some();
        let registration = match (&method.stream_in, method.output.stream.is_some()) {
            (None, false) if attached => {
                let (attachment_arg, request_attached) = match &method.attachment {
                    Some(arg) => (quote!(#arg), true),
                    None => (quote!(__flumen_attachment), false),
                };
                let call_arg = method.attachment.as_ref();
                let call =
                    quote!(__flumen_service.#name(#context_arg #(#arg_names,)* #call_arg).await);
                let body = match (has_error, method.reply_attached()) {
                    (true, true) => call,
                    (true, false) => quote!(#call.map(#krate::__private::Plain)),
                    (false, true) => {
                        quote!(::core::result::Result::<_, #krate::NoError>::Ok(#call))
                    }
                    (false, false) => {
                        quote!(::core::result::Result::<_, #krate::NoError>::Ok(#krate::__private::Plain(#call)))
                    }
                };
                quote_spanned! {span=>
                    #krate::__private::unary_attached(router, #wire_name, ::core::clone::Clone::clone(__flumen_service_arc), #request_attached,
                        |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::Context, #args_pattern, #attachment_arg: #krate::Attachment| async move {
                            let _ = &__flumen_context;
                            let _ = &#attachment_arg;
                            #body
                        })?
                }
            }
            (None, false) => {
                let body = wrap_result(
                    &krate,
                    has_error,
                    quote!(__flumen_service.#name(#context_arg #(#arg_names),*).await),
                );
                quote_spanned! {span=>
                    #krate::__private::unary(router, #wire_name, ::core::clone::Clone::clone(__flumen_service_arc),
                        |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::Context, #args_pattern| async move {
                            let _ = &__flumen_context;
                            #body
                        })?
                }
            }
            (Some((items, item)), false) => {
                let body = wrap_result(
                    &krate,
                    has_error,
                    quote!(__flumen_service.#name(#context_arg #(#arg_names,)* #items).await),
                );
                quote_spanned! {span=>
                    #krate::__private::client_streaming(router, #wire_name, ::core::clone::Clone::clone(__flumen_service_arc),
                        |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::Context, #args_pattern, #items: #krate::Streaming<#item>| async move {
                            let _ = &__flumen_context;
                            #body
                        })?
                }
            }
            (None, true) => {
                let body = wrap_items(
                    &krate,
                    has_error,
                    quote!(__flumen_service.#name(#context_arg #(#arg_names),*).await),
                );
                quote_spanned! {span=>
                    #krate::__private::server_streaming(router, #wire_name, ::core::clone::Clone::clone(__flumen_service_arc),
                        |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::Context, #args_pattern| async move {
                            let _ = &__flumen_context;
                            #body
                        })?
                }
            }
            (Some((items, item)), true) => {
                let body = wrap_items(
                    &krate,
                    has_error,
                    quote!(__flumen_service.#name(#context_arg #(#arg_names,)* #items).await),
                );
                quote_spanned! {span=>
                    #krate::__private::bidirectional(router, #wire_name, ::core::clone::Clone::clone(__flumen_service_arc),
                        |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::Context, #args_pattern, #items: #krate::Streaming<#item>| async move {
                            let _ = &__flumen_context;
                            #body
                        })?
                }
            }
        };
        registrations.push(quote!(let router = #registration;));
    }

    let client_doc = format!(
        "Client of the [`{service_name}`] service, generated by `#[flumen::service]`.\n\n\
         Cheap to clone; clones share one multiplexed connection and may call from many tasks, \
         and from plain threads with the `_blocking` methods. \
         [`with_timeout`](Self::with_timeout) and [`with_metadata`](Self::with_metadata) \
         return a client whose calls carry those settings."
    );
    let server_doc = format!(
        "Serves an implementation of [`{service_name}`]: it is a `flumen::Dispatch` to serve \
         alone (`Server::new(server)`), or add it to a `flumen::Router` with `Router::service` \
         (several services may share one router, so one port)."
    );
    let n = id_names.len();
    let collision = format!("two methods of service `{service_name}` have the same method id");
    Ok(quote! {
        #(#trait_docs)*
        #(#other_attrs)*
        #vis trait #service: ::core::marker::Send + ::core::marker::Sync + 'static #plus #supertraits {
            #(#trait_fns)*
        }

        #[doc = #client_doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #client<C = #krate::MsgPack> {
            client: #krate::Client<C>,
            options: #krate::CallOptions,
            affinity: ::core::option::Option<u64>,
        }

        impl #client {
            #(#id_consts)*
        }

        const _: () = {
            let ids: [u32; #n] = [#(#client::#id_names.as_u32()),*];
            let mut i = 0;
            while i < ids.len() {
                let mut j = i + 1;
                while j < ids.len() {
                    if ids[i] == ids[j] {
                        ::core::panic!(#collision);
                    }
                    j += 1;
                }
                i += 1;
            }
        };

        impl<C: #krate::Codec> #client<C> {
            /// A client of this service on `client`'s connection.
            pub fn new(client: #krate::Client<C>) -> Self {
                Self { client, options: #krate::CallOptions::new(), affinity: ::core::option::Option::None }
            }

            /// The same client, whose calls use `timeout` (`None`: no deadline) instead of the
            /// connection's default. Streaming calls have no deadline unless one is set here.
            pub fn with_timeout(&self, timeout: ::core::option::Option<::core::time::Duration>) -> Self {
                Self {
                    client: ::core::clone::Clone::clone(&self.client),
                    options: ::core::clone::Clone::clone(&self.options).timeout(timeout),
                    affinity: self.affinity,
                }
            }

            /// The same client, whose calls carry `metadata` (tracing ids, auth).
            ///
            /// # Errors
            ///
            /// If the metadata exceeds its limits (entries, bytes).
            pub fn with_metadata(
                &self,
                metadata: &#krate::Metadata,
            ) -> ::core::result::Result<Self, #krate::stream::metadata::MetadataError> {
                ::core::result::Result::Ok(Self {
                    client: ::core::clone::Clone::clone(&self.client),
                    options: ::core::clone::Clone::clone(&self.options).metadata(metadata)?,
                    affinity: self.affinity,
                })
            }

            /// The same client, whose calls carry the affinity `key`: a balanced client with
            /// `Strategy::ConsistentHash` sends every call with one key to the same endpoint
            /// (for caches), and moves only a share of the keys when endpoints come and go.
            pub fn with_affinity(&self, key: impl ::core::convert::AsRef<[u8]>) -> Self {
                Self {
                    client: ::core::clone::Clone::clone(&self.client),
                    options: ::core::clone::Clone::clone(&self.options),
                    affinity: ::core::option::Option::Some(#krate::balance::affinity(key)),
                }
            }

            /// The connection underneath.
            pub fn client(&self) -> &#krate::Client<C> {
                &self.client
            }

            #(#client_fns)*
        }

        #[doc = #server_doc]
        #vis struct #server<S> {
            service: ::std::sync::Arc<S>,
            /// The MessagePack routes, for serving this service alone (`Dispatch`).
            router: ::std::sync::Arc<#krate::Router>,
        }

        impl<S> ::core::clone::Clone for #server<S> {
            fn clone(&self) -> Self {
                Self {
                    service: ::core::clone::Clone::clone(&self.service),
                    router: ::core::clone::Clone::clone(&self.router),
                }
            }
        }

        impl<S> ::core::fmt::Debug for #server<S> {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(::core::concat!(::core::stringify!(#server), " { .. }"))
            }
        }

        impl<S: #service> #server<S> {
            /// Serves `service`.
            pub fn new(service: S) -> Self {
                Self::from_arc(::std::sync::Arc::new(service))
            }

            /// Serves a shared `service`.
            pub fn from_arc(service: ::std::sync::Arc<S>) -> Self {
                let router = Self::routes(#krate::Router::new(), &service);
                Self { service, router: ::std::sync::Arc::new(router) }
            }

            /// A MessagePack router serving only this service (add others with
            /// `Router::service`).
            pub fn into_router(self) -> #krate::Router {
                Self::routes(#krate::Router::new(), &self.service)
            }

            fn routes(router: #krate::Router, service: &::std::sync::Arc<S>) -> #krate::Router {
                match Self::register_on(router, service) {
                    ::core::result::Result::Ok(router) => router,
                    // Ids within one service are checked at compile time, and the router is new.
                    ::core::result::Result::Err(error) => ::core::panic!("{}", error),
                }
            }

            fn register_on<C: #krate::Codec>(
                router: #krate::Router<C>,
                __flumen_service_arc: &::std::sync::Arc<S>,
            ) -> ::core::result::Result<#krate::Router<C>, #krate::RouteError> {
                #(#registrations)*
                ::core::result::Result::Ok(router)
            }
        }

        impl<S: #service, C: #krate::Codec> #krate::Service<C> for #server<S> {
            fn register(
                self,
                router: #krate::Router<C>,
            ) -> ::core::result::Result<#krate::Router<C>, #krate::RouteError> {
                Self::register_on(router, &self.service)
            }
        }

        /// Serves this service alone on a `flumen::Server` (MessagePack).
        impl<S: #service> #krate::Dispatch for #server<S> {
            type Future = #krate::RouterFuture;

            fn dispatch(&self, request: #krate::Request) -> #krate::RouterFuture {
                #krate::Dispatch::dispatch(&*self.router, request)
            }
        }
    })
}

/// A handler body whose value is the method's result: wraps plain values in `Ok`.
fn wrap_result(krate: &TokenStream2, has_error: bool, call: TokenStream2) -> TokenStream2 {
    if has_error {
        call
    } else {
        quote!(::core::result::Result::<_, #krate::NoError>::Ok(#call))
    }
}

/// A handler body whose value is a stream: wraps plain items in `Ok`.
fn wrap_items(krate: &TokenStream2, has_error: bool, call: TokenStream2) -> TokenStream2 {
    if has_error {
        call
    } else {
        quote!(#krate::__private::ok_items(#call))
    }
}
