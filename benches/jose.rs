//! Throughput of `sign_jwt` / `verify_compact` per algorithm on a realistic
//! TA NP authorization assertion, beside the raw ring (p521 for ES512)
//! operation on the same signing input, so the JOSE layer's own cost shows.
//!
//! `cargo bench --bench jose` prints a markdown table (about 30 s). Run
//! without `--bench` (as `cargo test --all-targets` does), every operation
//! runs once as a smoke test.

use np_agent::jose::{Alg, Jwks, SigningKey, generate_pkcs8_pem, verify_compact};
use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, KeyPair as _};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;
use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, Box<dyn Error>>;

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

/// Operations per second of `op`, run for at least `budget` (at least once).
fn rate(budget: Duration, mut op: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        op()?;
    }
    let start = Instant::now();
    let mut count = 0u64;
    loop {
        op()?;
        count += 1;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            return Ok(count as f64 / elapsed.as_secs_f64());
        }
    }
}

/// The same key used directly through ring or p521.
enum Raw {
    Rsa {
        pair: ring_sig::RsaKeyPair,
        public: ring_sig::RsaPublicKeyComponents<Vec<u8>>,
        encoding: &'static dyn ring_sig::RsaEncoding,
        verification: &'static ring_sig::RsaParameters,
        rng: SystemRandom,
    },
    Ecdsa {
        pair: ring_sig::EcdsaKeyPair,
        verification: &'static ring_sig::EcdsaVerificationAlgorithm,
        rng: SystemRandom,
    },
    P521(Box<p521::ecdsa::SigningKey>),
}

impl Raw {
    fn new(pem: &str, alg: Alg) -> Result<Raw> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())?;
        let der = der.secret_pkcs8_der();
        let rng = SystemRandom::new();
        let rsa = |encoding, verification| -> Result<Raw> {
            let pair = ring_sig::RsaKeyPair::from_pkcs8(der).map_err(|e| e.to_string())?;
            Ok(Raw::Rsa {
                public: ring_sig::RsaPublicKeyComponents::<Vec<u8>>::from(pair.public()),
                pair,
                encoding,
                verification,
                rng: SystemRandom::new(),
            })
        };
        let ecdsa = |signing, verification| -> Result<Raw> {
            Ok(Raw::Ecdsa {
                pair: ring_sig::EcdsaKeyPair::from_pkcs8(signing, der, &rng)
                    .map_err(|e| e.to_string())?,
                verification,
                rng: SystemRandom::new(),
            })
        };
        match alg {
            Alg::Ps256 => rsa(
                &ring_sig::RSA_PSS_SHA256,
                &ring_sig::RSA_PSS_2048_8192_SHA256,
            ),
            Alg::Ps384 => rsa(
                &ring_sig::RSA_PSS_SHA384,
                &ring_sig::RSA_PSS_2048_8192_SHA384,
            ),
            Alg::Ps512 => rsa(
                &ring_sig::RSA_PSS_SHA512,
                &ring_sig::RSA_PSS_2048_8192_SHA512,
            ),
            Alg::Rs256 => rsa(
                &ring_sig::RSA_PKCS1_SHA256,
                &ring_sig::RSA_PKCS1_2048_8192_SHA256,
            ),
            Alg::Rs384 => rsa(
                &ring_sig::RSA_PKCS1_SHA384,
                &ring_sig::RSA_PKCS1_2048_8192_SHA384,
            ),
            Alg::Es256 => ecdsa(
                &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                &ring_sig::ECDSA_P256_SHA256_FIXED,
            ),
            Alg::Es384 => ecdsa(
                &ring_sig::ECDSA_P384_SHA384_FIXED_SIGNING,
                &ring_sig::ECDSA_P384_SHA384_FIXED,
            ),
            Alg::Es512 => {
                use p521::pkcs8::DecodePrivateKey as _;
                Ok(Raw::P521(Box::new(
                    p521::ecdsa::SigningKey::from_pkcs8_der(der).map_err(|e| e.to_string())?,
                )))
            }
        }
    }

    fn library(&self) -> &'static str {
        match self {
            Raw::Rsa { .. } | Raw::Ecdsa { .. } => "ring",
            Raw::P521(_) => "p521",
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        match self {
            Raw::Rsa {
                pair,
                encoding,
                rng,
                ..
            } => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, rng, message, &mut signature)
                    .map_err(|e| e.to_string())?;
                Ok(signature)
            }
            Raw::Ecdsa { pair, rng, .. } => Ok(pair
                .sign(rng, message)
                .map_err(|e| e.to_string())?
                .as_ref()
                .to_vec()),
            Raw::P521(key) => {
                use p521::ecdsa::signature::Signer as _;
                let signature: p521::ecdsa::Signature = key.try_sign(message)?;
                Ok(signature.to_bytes().to_vec())
            }
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
        match self {
            Raw::Rsa {
                public,
                verification,
                ..
            } => public
                .verify(verification, message, signature)
                .map_err(|e| e.to_string().into()),
            Raw::Ecdsa {
                pair, verification, ..
            } => ring_sig::UnparsedPublicKey::new(*verification, pair.public_key().as_ref())
                .verify(message, signature)
                .map_err(|e| e.to_string().into()),
            Raw::P521(key) => {
                use p521::ecdsa::signature::Verifier as _;
                let signature = p521::ecdsa::Signature::from_slice(signature)?;
                Ok(key.verifying_key().verify(message, &signature)?)
            }
        }
    }
}
