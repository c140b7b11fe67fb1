//! The generated server: the handler registration of each method on a `Router`, and the
//! server type (a `Dispatch` to serve the service alone, a `Service` for shared routers).

use proc_macro2::{Ident, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};

use crate::parse::{type_text, Method};

/// The statement that adds `method`'s handler to `router` (a `Router<C>` in scope), calling
/// the implementation behind `__flumen_service_arc`.
pub(crate) fn registration(krate: &TokenStream2, wire_name: &str, method: &Method) -> TokenStream2 {
    let name = &method.name;
    let arg_names: Vec<_> = method.args.iter().map(|(arg, _)| arg).collect();
    let arg_types: Vec<_> = method.args.iter().map(|(_, ty)| ty).collect();
    let attached = method.attachment.is_some() || method.reply_attached();
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
            let call = quote!(__flumen_service.#name(#context_arg #(#arg_names,)* #call_arg).await);
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
                    |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::CallContext, #args_pattern, #attachment_arg: #krate::Attachment| async move {
                        let _ = &__flumen_context;
                        let _ = &#attachment_arg;
                        #body
                    })?
            }
        }
        (None, false) => {
            let body = wrap_result(
                krate,
                has_error,
                quote!(__flumen_service.#name(#context_arg #(#arg_names),*).await),
            );
            quote_spanned! {span=>
                #krate::__private::unary(router, #wire_name, ::core::clone::Clone::clone(__flumen_service_arc),
                    |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::CallContext, #args_pattern| async move {
                        let _ = &__flumen_context;
                        #body
                    })?
            }
        }
        (Some((items, item)), false) => {
            let body = wrap_result(
                krate,
                has_error,
                quote!(__flumen_service.#name(#context_arg #(#arg_names,)* #items).await),
            );
            quote_spanned! {span=>
                #krate::__private::client_streaming(router, #wire_name, ::core::clone::Clone::clone(__flumen_service_arc),
                    |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::CallContext, #args_pattern, #items: #krate::Streaming<#item>| async move {
                        let _ = &__flumen_context;
                        #body
                    })?
            }
        }
        (None, true) => {
            let body = wrap_items(
                krate,
                has_error,
                quote!(__flumen_service.#name(#context_arg #(#arg_names),*).await),
            );
            quote_spanned! {span=>
                #krate::__private::server_streaming(router, #wire_name, ::core::clone::Clone::clone(__flumen_service_arc),
                    |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::CallContext, #args_pattern, __flumen_replies| async move {
                        let _ = &__flumen_context;
                        __flumen_replies.forward(#body).await
                    })?
            }
        }
        (Some((items, item)), true) => {
            let body = wrap_items(
                krate,
                has_error,
                quote!(__flumen_service.#name(#context_arg #(#arg_names,)* #items).await),
            );
            quote_spanned! {span=>
                #krate::__private::bidirectional(router, #wire_name, ::core::clone::Clone::clone(__flumen_service_arc),
                    |__flumen_service: ::std::sync::Arc<S>, __flumen_context: #krate::CallContext, #args_pattern, #items: #krate::Streaming<#item>, __flumen_replies| async move {
                        let _ = &__flumen_context;
                        __flumen_replies.forward(#body).await
                    })?
            }
        }
    };
    // A method compiled out is not registered; a deprecated one is still served.
    let cfgs: Vec<_> = method
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .collect();
    let spec = spec(krate, wire_name, method);
    quote! {
        #(#cfgs)*
        #[allow(deprecated)]
        let router = #registration;
        #(#cfgs)*
        let router = #krate::__private::describe(router, &#spec);
    }
}

/// What reflection tells of `method`: a `MethodSpec` literal.
fn spec(krate: &TokenStream2, wire_name: &str, method: &Method) -> TokenStream2 {
    let service = wire_name
        .rsplit_once('.')
        .map_or("", |(service, _)| service);
    let shape = match (&method.stream_in, &method.output.stream) {
        (None, None) => quote!(Unary),
        (None, Some(_)) => quote!(ServerStreaming),
        (Some(_), None) => quote!(ClientStreaming),
        (Some(_), Some(_)) => quote!(Bidirectional),
    };
    let idempotent = method.idempotent;
    let args = method.args.iter().map(|(name, ty)| {
        let (name, ty) = (name.to_string(), type_text(ty));
        quote!((#name, #ty))
    });
    let option = |text: Option<String>| match text {
        Some(text) => quote!(::core::option::Option::Some(#text)),
        None => quote!(::core::option::Option::None),
    };
    let request_item = option(method.stream_in.as_ref().map(|(_, item)| type_text(item)));
    let response = type_text(method.reply_message());
    let error = option(method.output.err.as_ref().map(type_text));
    let request_attachment = method.attachment.is_some();
    let reply_attachment = method.reply_attached();
    let doc = method.doc_text();
    quote! {
        #krate::__private::MethodSpec {
            name: #wire_name,
            service: #service,
            shape: #krate::__private::Shape::#shape,
            idempotent: #idempotent,
            args: &[#(#args),*],
            request_item: #request_item,
            response: #response,
            error: #error,
            request_attachment: #request_attachment,
            reply_attachment: #reply_attachment,
            raw: false,
            doc: #doc,
        }
    }
}

/// The server type of `service`, registering `registrations`.
pub(crate) fn server_type(
    krate: &TokenStream2,
    vis: &syn::Visibility,
    service: &Ident,
    service_name: &str,
    server: &Ident,
    registrations: &[TokenStream2],
) -> TokenStream2 {
    let server_doc = format!(
        "Serves an implementation of [`{service_name}`]: it is a `flumen::Dispatch` to serve \
         alone (`Server::new(server)`), or add it to a `flumen::Router` with `Router::service` \
         (several services may share one router, so one port)."
    );
    quote! {
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
    }
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
