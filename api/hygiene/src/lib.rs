//! A service declared where neither `flumen` (renamed `rpc` here) nor the prelude is in scope:
//! the generated code must name everything by absolute path.

/// The service, every type spelled out, in a module without the prelude.
#[no_implicit_prelude]
pub mod declared {
    /// An error type.
    #[derive(Debug, ::serde::Serialize, ::serde::Deserialize)]
    pub struct Refused(pub ::std::string::String);

    impl ::std::fmt::Display for Refused {
        fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
            f.write_str(&self.0)
        }
    }

    /// A service of each method shape.
    #[::rpc::service]
    pub trait Hygienic {
        /// Unary with an error.
        async fn check(&self, value: u32) -> ::std::result::Result<u32, Refused>;
        /// Unary without one, with the call context.
        async fn plain(&self, ctx: ::rpc::CallContext) -> ::std::option::Option<u64>;
        /// Server streaming.
        async fn items(&self, n: u32) -> impl Stream<Item = ::std::result::Result<u32, Refused>>;
        /// Client streaming.
        async fn total(&self, items: ::rpc::Streaming<u32>) -> u64;
        /// Bidirectional.
        async fn both(&self, items: ::rpc::Streaming<u32>) -> impl Stream<Item = u32>;
    }
}

#[cfg(test)]
mod tests {
    use ::std::{option::Option, result::Result, string::ToString};

    use super::declared::{Hygienic, HygienicClient, HygienicServer, Refused};

    struct Impl;

    impl Hygienic for Impl {
        async fn check(&self, value: u32) -> Result<u32, Refused> {
            if value == 0 {
                Result::Err(Refused("zero".to_string()))
            } else {
                Result::Ok(value)
            }
        }

        async fn plain(&self, ctx: ::rpc::CallContext) -> Option<u64> {
            ctx.remaining().map(|d| d.as_secs())
        }

        async fn items(&self, n: u32) -> impl ::rpc::Stream<Item = Result<u32, Refused>> {
            ::futures_lite::stream::iter((0..n).map(Result::Ok))
        }

        async fn total(&self, items: ::rpc::Streaming<u32>) -> u64 {
            use ::futures_lite::StreamExt;
            items
                .fold(0, |sum, item| sum + u64::from(item.unwrap_or(0)))
                .await
        }

        async fn both(&self, items: ::rpc::Streaming<u32>) -> impl ::rpc::Stream<Item = u32> {
            use ::futures_lite::StreamExt;
            items.filter_map(Result::ok)
        }
    }

    #[::tokio::test]
    async fn renamed_crate_without_prelude() {
        let rt = ::rpc::rt::TokioRuntime::current();
        let addr = "127.0.0.1:0".parse().unwrap();
        let server = ::rpc::Server::new(HygienicServer::new(Impl).into_router())
            .bind(&rt, &::rpc::tcp::TokioTcp::default(), &addr)
            .await
            .unwrap();
        let client =
            ::rpc::Client::connect(&rt, &::rpc::tcp::TokioTcp::default(), server.local_addr())
                .await
                .unwrap();
        let client = HygienicClient::new(client);
        ::std::assert_eq!(client.check(7).await.unwrap(), 7);
        ::std::assert!(client.check(0).await.unwrap_err().method().is_some());
        let items = ::futures_lite::stream::iter([1u32, 2, 3]);
        ::std::assert_eq!(client.total(items).await.unwrap(), 6);
        let echoed = ::futures_lite::StreamExt::count(client.items(4).await.unwrap()).await;
        ::std::assert_eq!(echoed, 4);
    }
}
