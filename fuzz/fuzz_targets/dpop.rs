#![no_main]
// DPoP proofs (RFC 9449) and `htu` comparison on arbitrary bytes: never panics, accepts
// only the seed proof, and the replay table refuses it the second time.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    portcullis_fuzz::dpop(data);
});
