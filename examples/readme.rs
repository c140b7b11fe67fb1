//! The README's and the user guide's code, compiled: every `rust` block of the top-level
//! `README.md` and of each chapter under `guide/` is a doctest of this crate (`cargo test
//! --workspace` runs them), so neither can drift from the API. Blocks marked `no_run` (they
//! need files, other hosts or fixed ports) are compiled only.

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// One doctest item per chapter of the guide, named after it.
macro_rules! guide {
    ($($name:ident = $file:literal;)*) => {
        $(
            #[cfg(doctest)]
            #[doc = include_str!(concat!("../guide/", $file))]
            pub struct $name;
        )*
    };
}

guide! {
    GuideIndex = "README.md";
    GettingStarted = "01-getting-started.md";
    ServicesAndErrors = "02-services-and-errors.md";
    StreamingAndFlowControl = "03-streaming-and-flow-control.md";
    DeadlinesAndCancellation = "04-deadlines-and-cancellation.md";
    TransportsAndSecurity = "05-transports-and-security.md";
    BalancingRetriesHedging = "06-balancing-retries-hedging.md";
    Discovery = "07-discovery.md";
    ClusterMembership = "08-cluster-membership.md";
    Observability = "09-observability.md";
    TuningAndBenchmarks = "10-tuning-and-benchmarks.md";
    Operations = "11-operations.md";
    Protocol = "12-protocol.md";
}
