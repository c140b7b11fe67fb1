//! Compile-time errors of `#[flumen::service]` for the common mistakes: each must point at the
//! mistake with a message that says what to write instead.

#[test]
fn service_macro_mistakes() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
