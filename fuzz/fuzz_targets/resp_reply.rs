//! The benchmark's Redis reply reader (`crates/tandem-bench/src/resp.rs`, included as it is:
//! it is std only) on bytes a server controls.
//!
//! Properties: no panic; a reply takes at most the bytes given; the bytes it took parse to the
//! same reply on their own, and every strict prefix of them is incomplete (never another
//! reply, never an error a longer read would not have given).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/tandem-bench/src/resp.rs"]
mod resp;

fuzz_target!(|data: &[u8]| {
    let Ok(Some((reply, used))) = resp::parse(data) else {
        return;
    };
    assert!(used <= data.len());
    assert_eq!(resp::parse(&data[..used]), Ok(Some((reply, used))));
    for end in 0..used {
        assert_eq!(resp::parse(&data[..end]), Ok(None), "prefix of {end} bytes");
    }
});
