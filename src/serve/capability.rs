//! Our STU3 CapabilityStatement (`GET /fhir/metadata`): what this build serves.

use crate::config::Config;

/// The CapabilityStatement, dated `now`.
pub fn statement(cfg: &Config, now: i64) -> String {
    serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": crate::util::time::rfc3339(now),
        "kind": "instance",
        "software": {"name": "np-agent", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "np-agent edge agent", "url": format!("{}/fhir", cfg.public_url)},
        "fhirVersion": "3.0.2",
        "acceptUnknown": "no",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{"system": "http://hl7.org/fhir/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": cfg.token_endpoint()}]
                }]
            },
            "resource": []
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stu3_server_statement_pointing_at_our_token_endpoint() {
        let cfg = crate::config::tests_support::config();
        let c: serde_json::Value = serde_json::from_str(&statement(&cfg, 0)).unwrap();
        assert_eq!(c["resourceType"], "CapabilityStatement");
        assert_eq!(c["fhirVersion"], "3.0.2");
        assert_eq!(c["date"], "1970-01-01T00:00:00Z");
        assert_eq!(
            c["rest"][0]["security"]["extension"][0]["extension"][0]["valueUri"],
            format!("{}/oauth/token", cfg.public_url).as_str()
        );
    }
}
