//! The README's code, compiled: every `rust` block of the top-level `README.md` is a doctest of
//! this crate (`cargo test --workspace` runs them), so the README cannot drift from the API.
//! Blocks marked `no_run` (they need files, other hosts or fixed ports) are compiled only.

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
