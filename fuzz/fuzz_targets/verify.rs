#![no_main]
// The whole `Verifier::verify` against a fixed Ed25519 key. Must never panic, and must
// accept nothing but the tokens minted with that key (seeds/valid-*).
libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::verify(data));
