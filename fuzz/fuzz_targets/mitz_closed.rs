//! Mitz's answer to the closed question: never panics, and a decision is
//! only ever about a category that was asked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::ids::Bsn;
use np_agent::mitz::closed::reply::{self, Asked, Reply};

fuzz_target!(|data: &[u8]| {
    let Some(patient) = Bsn::parse("900203638") else {
        return;
    };
    let categories = ["GGC002", "GGC013"];
    let asked = Asked {
        message_id: "7c0f5a52-3a1e-4a6b-9d0c-2f6c1e8b4d11",
        patient: &patient,
        categories: &categories,
    };
    if let Ok(Reply::Decided(d)) = reply::parse(data, &asked) {
        let got: Vec<&str> = d.iter().map(|c| c.category.as_str()).collect();
        assert_eq!(got, categories, "one decision per asked category, in order");
    }
});
