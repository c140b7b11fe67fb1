//! What the macro reads: its arguments and each method's shape (context, arguments, client
//! stream, attachment, reply or reply stream, error type, `#[idempotent]`).

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::quote;
use syn::{
    parse::{Parse, ParseStream},
    spanned::Spanned,
    Attribute, Error, FnArg, GenericArgument, Ident, LitStr, Pat, Path, PathArguments, ReturnType,
    Token, TraitItemFn, Type, TypeParamBound,
};

/// `#[service]` or `#[service(crate = "path::to::flumen")]`.
pub(crate) struct Args {
    pub(crate) krate: Option<Path>,
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
pub(crate) fn krate(args: &Args) -> TokenStream2 {
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
pub(crate) struct Output {
    pub(crate) ok: Type,
    pub(crate) err: Option<Type>,
    /// The declared item type of a streaming method.
    pub(crate) stream: Option<Box<Type>>,
}

pub(crate) struct Method {
    pub(crate) name: Ident,
    pub(crate) docs: Vec<Attribute>,
    /// The method's other attributes that pass through to what is generated for it (`cfg`,
    /// lint levels, `deprecated`).
    pub(crate) attrs: Vec<Attribute>,
    /// The `Context` parameter, if declared.
    pub(crate) context: Option<(Pat, Type)>,
    /// The message arguments, in order.
    pub(crate) args: Vec<(Ident, Type)>,
    /// The client's stream: its parameter name and item type.
    pub(crate) stream_in: Option<(Ident, Type)>,
    /// The request's attachment parameter.
    pub(crate) attachment: Option<Ident>,
    pub(crate) output: Output,
    /// Declared `#[idempotent]`: safe to run twice, so a balanced client may retry it after
    /// a connection broke mid-call.
    pub(crate) idempotent: bool,
}

impl Method {
    /// The passed-through attributes as the client's methods carry them: an `expect` (plain
    /// or under `cfg_attr`) becomes an `allow` there, since the lint it expects may fire on
    /// the trait's method alone.
    pub(crate) fn client_attrs(&self) -> Vec<Attribute> {
        self.attrs
            .iter()
            .map(|attr| match &attr.meta {
                syn::Meta::List(list) if list.path.is_ident("cfg_attr") => {
                    let parsed = list.parse_args_with(
                        syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
                    );
                    match parsed {
                        Ok(metas) => {
                            let metas = metas.iter().map(allow_for_expect);
                            syn::parse_quote!(#[cfg_attr(#(#metas),*)])
                        }
                        Err(_) => attr.clone(),
                    }
                }
                meta => {
                    let meta = allow_for_expect(meta);
                    syn::parse_quote!(#[#meta])
                }
            })
            .collect()
    }

    /// Whether the reply carries an attachment (`WithAttachment<T>`).
    pub(crate) fn reply_attached(&self) -> bool {
        self.output.stream.is_none()
            && last_segment(&self.output.ok).is_some_and(|s| s.ident == "WithAttachment")
    }
}

impl Method {
    /// The reply's message type: the declared one, less a `WithAttachment` around it.
    pub(crate) fn reply_message(&self) -> &Type {
        if self.reply_attached() {
            if let Some([message]) = last_segment(&self.output.ok).map(type_args).as_deref() {
                return message;
            }
        }
        &self.output.ok
    }

    /// The method's documentation as one string, each line's leading space removed.
    pub(crate) fn doc_text(&self) -> String {
        let lines: Vec<String> = self
            .docs
            .iter()
            .filter_map(|attr| match &attr.meta {
                syn::Meta::NameValue(syn::MetaNameValue {
                    value:
                        syn::Expr::Lit(syn::ExprLit {
                            lit: syn::Lit::Str(text),
                            ..
                        }),
                    ..
                }) => Some(text.value()),
                _ => None,
            })
            .map(|line| line.strip_prefix(' ').unwrap_or(&line).to_owned())
            .collect();
        lines.join("\n").trim().to_owned()
    }
}

/// `ty` as a person writes it: `Option<Vec<u8>>`, not the tokens' `Option < Vec < u8 > >`.
pub(crate) fn type_text(ty: &Type) -> String {
    let tokens = quote::ToTokens::to_token_stream(ty).to_string();
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '\'';
    let chars: Vec<char> = tokens.chars().collect();
    let mut text = String::with_capacity(tokens.len());
    for (i, &c) in chars.iter().enumerate() {
        if c == ' ' {
            let before = i.checked_sub(1).map(|j| chars[j]);
            let after = chars.get(i + 1).copied();
            // A space stays between two words (`dyn Trait`, `&'a mut T`) and after a comma.
            if before.is_some_and(word) && after.is_some_and(word)
                || matches!(before, Some(',' | ';'))
            {
                text.push(' ');
            }
        } else {
            text.push(c);
        }
    }
    text
}

/// `expect(lints)` as `allow(lints)`; any other meta as it is.
fn allow_for_expect(meta: &syn::Meta) -> syn::Meta {
    match meta {
        syn::Meta::List(list) if list.path.is_ident("expect") => {
            let lints = &list.tokens;
            syn::parse_quote!(allow(#lints))
        }
        other => other.clone(),
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

pub(crate) fn parse_method(method: &TraitItemFn) -> syn::Result<Method> {
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
        if index == 0 && segment.is_some_and(|s| s.ident == "CallContext" || s.ident == "Context") {
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
    let (docs, attrs, idempotent) = method_attrs(method)?;
    if let Some(attr) = idempotent.filter(|_| stream_in.is_some() || output.stream.is_some()) {
        return Err(Error::new_spanned(
            attr,
            "`#[idempotent]` has no effect on a streaming method: a stream is never retried \
             once it started (opening one is retried only when it provably never reached \
             the server); remove it",
        ));
    }
    if attachment.is_some() && (stream_in.is_some() || output.stream.is_some()) {
        return Err(Error::new(
            sig.ident.span(),
            "attachments are for unary methods: a streaming method sends raw bytes as items",
        ));
    }
    Ok(Method {
        name: sig.ident.clone(),
        docs,
        attrs,
        context,
        args,
        stream_in,
        attachment,
        output,
        idempotent: idempotent.is_some(),
    })
}

/// Attributes a service method may carry besides `#[idempotent]`, passed through to the
/// trait's method and the client's.
const PASSED_THROUGH: &[&str] = &[
    "doc",
    "cfg",
    "allow",
    "expect",
    "warn",
    "deny",
    "forbid",
    "deprecated",
];

/// A method's doc comments, its other passed-through attributes, and its `#[idempotent]`;
/// an error for any other attribute (which would otherwise be lost without a word).
fn method_attrs(
    method: &TraitItemFn,
) -> syn::Result<(Vec<Attribute>, Vec<Attribute>, Option<&Attribute>)> {
    let (mut docs, mut attrs, mut idempotent) = (Vec::new(), Vec::new(), None);
    for attr in &method.attrs {
        let path = attr.path();
        if path.is_ident("idempotent") {
            attr.meta.require_path_only()?;
            idempotent = Some(attr);
        } else if path.is_ident("doc") {
            docs.push(attr.clone());
        } else if PASSED_THROUGH.iter().any(|name| path.is_ident(name)) {
            attrs.push(attr.clone());
        } else if path.is_ident("cfg_attr") {
            check_cfg_attr(attr)?;
            attrs.push(attr.clone());
        } else {
            return Err(unknown_attribute(attr));
        }
    }
    Ok((docs, attrs, idempotent))
}

/// A `#[cfg_attr(predicate, attrs..)]` passes through when every attribute it applies would:
/// a lint level, `deprecated` or a doc comment. `idempotent` and `cfg` are read by the macro
/// itself, which sees them before the compiler evaluates the predicate, so they must be
/// written plainly.
fn check_cfg_attr(attr: &Attribute) -> syn::Result<()> {
    let list = attr.parse_args_with(
        syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
    )?;
    for applied in list.iter().skip(1) {
        let path = applied.path();
        if path.is_ident("idempotent") || path.is_ident("cfg") {
            let name = quote::ToTokens::to_token_stream(path).to_string();
            return Err(Error::new_spanned(
                applied,
                format!(
                    "`#[{name}]` cannot be applied through `cfg_attr` on a service method: the \
                     service macro reads it before the condition is known; write it plainly \
                     (or put the whole method under `#[cfg(..)]`)"
                ),
            ));
        }
        if !PASSED_THROUGH.iter().any(|name| path.is_ident(name)) {
            return Err(unknown_attribute_in(applied.path(), applied));
        }
    }
    Ok(())
}

fn unknown_attribute(attr: &Attribute) -> Error {
    unknown_attribute_in(attr.path(), attr)
}

fn unknown_attribute_in(path: &syn::Path, spanned: &dyn quote::ToTokens) -> Error {
    let name = quote::ToTokens::to_token_stream(path)
        .to_string()
        .replace(' ', "");
    let known = std::iter::once("idempotent").chain(PASSED_THROUGH.iter().copied());
    let nearest = known
        .map(|known| (edit_distance(&name, known), known))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    let message = match nearest {
        Some((_, known)) => {
            format!("unknown attribute `#[{name}]` on a service method; did you mean `#[{known}]`?")
        }
        None => format!(
            "unknown attribute `#[{name}]` on a service method: it may carry `#[idempotent]`, \
             doc comments, `cfg`, `cfg_attr`, `allow`, `expect`, `warn`, `deny`, `forbid` and \
             `deprecated`"
        ),
    };
    Error::new_spanned(spanned, message)
}

/// The Levenshtein distance of `a` and `b` (insertions, deletions and substitutions).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}
