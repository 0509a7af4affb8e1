//! A partner's JWKS (fetched from its `jwks_uri`): never panics; a set that
//! is accepted holds no private member, writes out as JSON that parses to the
//! same keys, and each key's thumbprint is 43 base64url characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::jose::Jwks;

fuzz_target!(|data: &[u8]| {
    let Ok(set) = Jwks::parse(data) else {
        return;
    };
    let written = set.to_json();
    // Member names are checked on the parsed text: a substring test would
    // mistake a `kid` such as `a"k` (written `"a\"k"`) for a `k` member.
    let value: serde_json::Value = match serde_json::from_str(&written) {
        Ok(value) => value,
        Err(e) => panic!("written set is not JSON: {e}: {written}"),
    };
    let written_keys = value["keys"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    assert_eq!(written_keys.len(), set.keys.len(), "{written}");
    for key in written_keys {
        let Some(members) = key.as_object() else {
            panic!("written key is not an object: {written}");
        };
        for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
            assert!(!members.contains_key(private), "{written}");
        }
    }
    let again = match Jwks::parse(written.as_bytes()) {
        Ok(again) => again,
        Err(e) => panic!("written set does not read back: {e}: {written}"),
    };
    assert_eq!(again.to_json(), written);
    assert_eq!(again.skipped, 0);
    for key in &again.keys {
        let thumbprint = key.thumbprint();
        assert_eq!(thumbprint.len(), 43, "{thumbprint}");
    }
});
