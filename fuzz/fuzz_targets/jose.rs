#![no_main]
// Token splitting, strict base64url, JOSE header and claims parsing, and the JSON reader
// itself, on arbitrary bytes. Must never panic.
libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::jose(data));
