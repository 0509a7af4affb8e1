//! What the PRS, the NVI and their OAuth server answer: never panics; an
//! error text never holds a long number or a long base64 word (it may
//! quote our request, which holds the JWE and the blind factor).
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::config::NviApi;
use np_agent::nvi::{register, token};

fuzz_target!(|data: &[u8]| {
    let _ = register::read_eval(data);
    let _ = register::read_localized(NviApi::Fhir, data);
    let _ = register::read_localized(NviApi::Json, data);
    let _ = token::read_answer("nvi", "https://t/token", 200, data, None, 0);
    if let Some(text) = register::error_text(data) {
        let mut digits = 0;
        for c in text.chars() {
            digits = if c.is_ascii_digit() { digits + 1 } else { 0 };
            assert!(digits < 8, "{text}");
        }
    }
});
