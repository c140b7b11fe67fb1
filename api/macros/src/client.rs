//! The generated client: a struct over a `flumen::Client` with the service's method ids, a
//! collision check on them, the per-call settings (`with_timeout`, `with_metadata`,
//! `with_affinity`), and one method (two for unary calls: async and blocking) per trait method.

use proc_macro2::{Ident, TokenStream as TokenStream2};
use quote::{format_ident, quote};

use crate::parse::{Method, Output};

/// The client's methods for `method` of the service whose client type is `client`.
pub(crate) fn methods(
    krate: &TokenStream2,
    client: &Ident,
    wire_name: &str,
    id_const: &Ident,
    method: &Method,
) -> TokenStream2 {
    let name = &method.name;
    let docs = &method.docs;
    let attrs = &method.client_attrs();
    let mut client_fns = Vec::new();
    let arg_names: Vec<_> = method.args.iter().map(|(arg, _)| arg).collect();
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
                #(#attrs)*
                #[doc = ""]
                #[doc = #call_doc]
                pub async fn #name(&self, #(#client_params,)* #attachment_param)
                    -> ::core::result::Result<#ok, #krate::RpcError<#err>>
                {
                    let body = #krate::__private::call_attached::<_, #err, C>(
                        &self.client, &self.options, #krate::__private::Target::named(#client::#id_const, #wire_name), #route, #message, #attachment_arg,
                    ).await?;
                    #decode(self.client.codec(), body)
                }
            });
        }
        (None, false) => {
            let blocking = format_ident!("{}_blocking", name);
            let blocking_doc = format!(
                "[`{name}`](Self::{name}) from a plain thread (no runtime needed); \
                 blocks until the call resolves. On a thread that runs async tasks it fails at \
                 once with `CallError::BlockingInAsync`: await [`{name}`](Self::{name}) there."
            );
            client_fns.push(quote! {
                #(#docs)*
                #(#attrs)*
                #[doc = ""]
                #[doc = #call_doc]
                pub async fn #name(&self, #(#client_params),*)
                    -> ::core::result::Result<#ok, #krate::RpcError<#err>>
                {
                    #krate::__private::call(&self.client, &self.options, #krate::__private::Target::named(#client::#id_const, #wire_name), #route, #message).await
                }

                #[doc = #blocking_doc]
                #(#attrs)*
                pub fn #blocking(&self, #(#client_params),*)
                    -> ::core::result::Result<#ok, #krate::RpcError<#err>>
                {
                    #krate::__private::call_blocking(&self.client, &self.options, #krate::__private::Target::named(#client::#id_const, #wire_name), #route, #message)
                }
            });
        }
        (None, true) => client_fns.push(quote! {
            #(#docs)*
                #(#attrs)*
            #[doc = ""]
            #[doc = #call_doc]
            pub async fn #name(&self, #(#client_params),*)
                -> ::core::result::Result<#krate::ReplyItems<#ok, #err, C>, #krate::RpcError<#err>>
            {
                #krate::__private::server_stream(&self.client, &self.options, #krate::__private::Target::named(#client::#id_const, #wire_name), #route, #message).await
            }
        }),
        (Some((items, item)), false) => client_fns.push(quote! {
            #(#docs)*
                #(#attrs)*
            #[doc = ""]
            #[doc = #call_doc]
            pub async fn #name(
                &self,
                #(#client_params,)*
                #items: impl #krate::__private::Stream<Item = #item> + ::core::marker::Send + 'static,
            ) -> ::core::result::Result<#ok, #krate::RpcError<#err>>
            {
                #krate::__private::client_stream(&self.client, &self.options, #krate::__private::Target::named(#client::#id_const, #wire_name), #route, #message, #items).await
            }
        }),
        (Some((items, item)), true) => client_fns.push(quote! {
            #(#docs)*
                #(#attrs)*
            #[doc = ""]
            #[doc = #call_doc]
            #[doc = ""]
            #[doc = "Your items are sent from a task of their own on the client's runtime (a client made with a runtime: `connect`, `balanced`, `with_runtime`), or else as you poll the returned stream."]
            pub async fn #name(
                &self,
                #(#client_params,)*
                #items: impl #krate::__private::Stream<Item = #item> + ::core::marker::Send + 'static,
            ) -> ::core::result::Result<#krate::ReplyItems<#ok, #err, C>, #krate::RpcError<#err>>
            {
                #krate::__private::bidi_stream(&self.client, &self.options, #krate::__private::Target::named(#client::#id_const, #wire_name), #route, #message, #items).await
            }
        }),
    }
    quote!(#(#client_fns)*)
}

/// The client type: its method ids and their collision check, its settings, and `methods`.
pub(crate) fn client_type(
    krate: &TokenStream2,
    vis: &syn::Visibility,
    service_name: &str,
    client: &Ident,
    ids: &[(Ident, String, Vec<syn::Attribute>)],
    client_fns: &[TokenStream2],
) -> TokenStream2 {
    // A method compiled out has no id either (two alternatives under `cfg` may share a name).
    let id_consts = ids.iter().map(|(id_const, wire_name, cfgs)| {
        quote! {
            #(#cfgs)*
            #[doc = ::core::concat!("Method id of `", #wire_name, "`.")]
            pub const #id_const: #krate::MethodId = #krate::MethodId::from_name(#wire_name);
        }
    });
    let id_values = ids
        .iter()
        .map(|(id_const, _, cfgs)| quote!(#(#cfgs)* #client::#id_const.as_u32()));
    let client_doc = format!(
        "Client of the [`{service_name}`] service, generated by `#[flumen::service]`.\n\n\
         Cheap to clone; clones share one multiplexed connection and may call from many tasks, \
         and from plain threads with the `_blocking` methods. \
         [`with_timeout`](Self::with_timeout) and [`with_metadata`](Self::with_metadata) \
         return a client whose calls carry those settings."
    );
    let collision = format!("two methods of service `{service_name}` have the same method id");
    quote! {
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
            let ids: &[u32] = &[#(#id_values),*];
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

    }
}
