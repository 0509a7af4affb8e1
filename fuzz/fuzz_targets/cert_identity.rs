//! The identity read from a partner's certificate (the DER the TLS layer
//! has already chain-checked, but whose SAN and Subject the partner wrote)
//! and the `CERT` selectors that map it to a partner. Never panics; the URA
//! is 8 digits and agrees with the UZI name; a selector written out parses
//! to the same selector; the `sha256:` and `ura:` selectors made from an
//! identity parse.
//!
//! Input: a certificate (DER); read as text, also a selector.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::pki::{CertSelector, UziName, peer_identity};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(selector) = text.parse::<CertSelector>() {
        let written = selector.to_string();
        assert_eq!(
            written.parse::<CertSelector>().ok(),
            Some(selector),
            "{written}"
        );
    }
    if let Some(uzi) = UziName::parse(&text) {
        assert!(uzi.ura.len() == 8 && uzi.ura.bytes().all(|b| b.is_ascii_digit()));
    }
    let Ok(id) = peer_identity(data) else {
        return;
    };
    assert_eq!(id.fingerprint().len(), 64);
    assert_eq!(id.ura, id.uzi.as_ref().map(|u| u.ura.clone()));
    let mut selectors = vec![format!("sha256:{}", id.fingerprint())];
    selectors.extend(id.ura.iter().map(|u| format!("ura:{u}")));
    selectors.extend(id.serial_number.iter().map(|s| format!("serial:{s}")));
    selectors.extend(id.dns_names.iter().map(|d| format!("dns:{d}")));
    for (i, text) in selectors.iter().enumerate() {
        match text.parse::<CertSelector>() {
            Ok(selector) => {
                let written = selector.to_string();
                assert_eq!(written.parse::<CertSelector>().ok(), Some(selector));
            }
            // A serial number or DNS name the selector syntax cannot write
            // (a space at its end, say) cannot be selected; the certificate's
            // hash and a URA always can.
            Err(e) => assert!(i > usize::from(id.ura.is_some()), "{text}: {e}"),
        }
    }
});
