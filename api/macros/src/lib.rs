//! `#[flumen::service]`: turns a trait of `async fn`s into a typed client, a server adapter and
//! stable method ids. Use it through the `flumen` crate; its documentation shows the expansion.
//!
//! `parse` reads the trait, `client` and `server` emit the two generated types; `expand`
//! below emits the trait itself and puts the parts together.

mod client;
mod parse;
mod server;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::{parse_macro_input, spanned::Spanned, Error, ItemTrait, TraitItem};

use crate::parse::{krate, parse_method, Args, Method, Output};

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
    let mut ids = Vec::new();
    for method in &methods {
        let wire_name = format!("{service_name}.{}", method.name);
        let id_const = format_ident!("{}", method.name.to_string().to_uppercase());
        trait_fns.push(trait_fn(&krate, method));
        client_fns.push(client::methods(
            &krate, &client, &wire_name, &id_const, method,
        ));
        registrations.push(server::registration(&krate, &wire_name, method));
        let cfgs: Vec<_> = method
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("cfg"))
            .cloned()
            .collect();
        ids.push((id_const, wire_name, cfgs));
    }
    let client_type = client::client_type(&krate, vis, &service_name, &client, &ids, &client_fns);
    let server_type =
        server::server_type(&krate, vis, service, &service_name, &server, &registrations);
    Ok(quote! {
        #(#trait_docs)*
        #(#other_attrs)*
        #vis trait #service: ::core::marker::Send + ::core::marker::Sync + 'static #plus #supertraits {
            #(#trait_fns)*
        }

        #client_type

        #server_type
    })
}

/// The trait method, as implementors write it.
fn trait_fn(krate: &TokenStream2, method: &Method) -> TokenStream2 {
    let name = &method.name;
    let docs = &method.docs;
    let attrs = &method.attrs;
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
        // The implementation may return any `Send` stream of these items, borrowing `&self`
        // if it likes (the server forwards it while it holds the service).
        Output {
            stream: Some(item), ..
        } => quote!(impl #krate::Stream<Item = #item> + ::core::marker::Send),
        Output {
            ok, err: Some(err), ..
        } => quote!(::core::result::Result<#ok, #err>),
        Output { ok, err: None, .. } => quote!(#ok),
    };
    quote! {
        #(#docs)*
        #(#attrs)*
        fn #name(&self, #context_param #(#params),*)
            -> impl ::core::future::Future<Output = #returns> + ::core::marker::Send;
    }
}
