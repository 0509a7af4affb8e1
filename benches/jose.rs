//! Throughput of `sign_jwt` / `verify_compact` per algorithm on a realistic
//! TA NP authorization assertion, beside the raw ring (p521 for ES512)
//! operation on the same signing input, so the JOSE layer's own cost shows.
//!
//! `cargo bench --bench jose` prints a markdown table (about 30 s). Run
//! without `--bench` (as `cargo test --all-targets` does), every operation
//! runs once as a smoke test.

#[path = "support/raw.rs"]
mod raw;

use np_agent::jose::{Alg, Jwks, SigningKey, generate_pkcs8_pem, verify_compact};
use raw::{Raw, Result, rate};
use std::hint::black_box;
use std::time::Duration;

/// An authorization assertion as VIPLive sends one (spec §3.2), 60 s life.
const CLAIMS: &str = r#"{"iss":"https://np.hospital-a.example","sub":"2.16.528.1.1007.3.3.12345678","aud":"https://np.hospital-b.example/oauth/token","authorization_base":"5754d12a-bfb0-4e3f-847a-9460b45f3a92","authorizer":"2.16.528.1.1007.3.3.87654321","patient":"urn:oid:2.16.840.1.113883.2.4.6.3.999999151","iat":1734619244,"exp":1734619304,"jti":"b7f219b7-baae-4af5-8501-f027f32843bd"}"#;

/// Time spent on each measurement in `--bench` mode.
const BUDGET: Duration = Duration::from_millis(900);

fn main() -> Result<()> {
    let full = std::env::args().any(|arg| arg == "--bench");
    let budget = if full { BUDGET } else { Duration::ZERO };
    println!(
        "| alg | sign_jwt /s | raw sign /s | verify_compact /s | raw verify /s | raw library |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for alg in Alg::ALL {
        let pem = generate_pkcs8_pem(alg)?;
        let key = SigningKey::from_pkcs8_pem(&pem, alg, None)?;
        let keys = Jwks::new(vec![key.public_jwk()])?;
        let token = key.sign_jwt(CLAIMS.as_bytes())?;
        let input = token
            .rsplit_once('.')
            .map(|(input, _)| input.as_bytes().to_vec())
            .ok_or("token without dots")?;
        let raw = Raw::new(&pem, alg)?;
        let raw_signature = raw.sign(&input)?;
        raw.verify(&input, &raw_signature)?;
        verify_compact(&token, &keys, &Alg::ALL)?;

        let sign = rate(budget, || {
            key.sign_jwt(black_box(CLAIMS.as_bytes()))
                .map(drop)
                .map_err(Into::into)
        })?;
        let raw_sign = rate(budget, || raw.sign(black_box(&input)).map(drop))?;
        let verify = rate(budget, || {
            verify_compact(black_box(&token), &keys, &Alg::ALL)
                .map(drop)
                .map_err(Into::into)
        })?;
        let raw_verify = rate(budget, || raw.verify(black_box(&input), &raw_signature))?;
        println!(
            "| {alg} | {sign:.0} | {raw_sign:.0} | {verify:.0} | {raw_verify:.0} | {} |",
            raw.library()
        );
    }
    println!(
        "\nclaims {} bytes; RSA 3072-bit keys; one thread; {} per cell",
        CLAIMS.len(),
        if full {
            "0.9 s"
        } else {
            "1 run (smoke test, pass --bench)"
        }
    );
    Ok(())
}
