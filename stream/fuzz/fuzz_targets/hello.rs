//! The hello decoder over arbitrary 16 bytes: no panic, and a hello it accepts encodes back
//! to the same bytes.
#![no_main]

use flumen_stream::hello::{Hello, HELLO_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(bytes) = data.first_chunk::<HELLO_LEN>() else {
        return;
    };
    if let Ok(hello) = Hello::decode(bytes) {
        assert_eq!(&hello.encode(), bytes);
    }
});
