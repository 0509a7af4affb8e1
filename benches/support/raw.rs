//! The machine's own limits, measured without np-agent: signatures straight
//! through ring (p521 for ES512) and the durable write of one small file
//! (temp file, write, fsync, rename, fsync of the directory) with std alone.
//! Benches divide np-agent's rates by these, measured in the same run.
#![allow(dead_code)]

use std::error::Error;
use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use np_agent::jose::Alg;
use ring::rand::SystemRandom;
use ring::signature::{self as ring_sig, KeyPair as _};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;

pub type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Operations per second of `op`, run for at least `budget` (at least once,
/// after three warm-up calls).
pub fn rate(budget: Duration, mut op: impl FnMut() -> Result<()>) -> Result<f64> {
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

/// Durable writes of `bytes`-sized files per second in `dir`, one at a time
/// for `budget`: create a temp file, write, fsync, rename over the final name,
/// fsync the directory (what `util::durable::write_atomic` does, with std
/// only). Each write has its own final name; all are removed afterwards.
pub fn durable_writes_per_sec(dir: &Path, bytes: usize, budget: Duration) -> Result<f64> {
    let body = vec![b'x'; bytes];
    let dir = dir.join(".raw-durable");
    std::fs::create_dir_all(&dir)?;
    let handle = File::open(&dir)?;
    let mut n = 0u64;
    let per_sec = rate(budget, || {
        n += 1;
        let tmp = dir.join(format!(".w{n}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("w{n}")))?;
        handle.sync_all()?;
        Ok(())
    })?;
    std::fs::remove_dir_all(&dir)?;
    Ok(per_sec)
}

/// The same key used directly through ring or p521.
pub enum Raw {
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
    pub fn new(pem: &str, alg: Alg) -> Result<Raw> {
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

    pub fn library(&self) -> &'static str {
        match self {
            Raw::Rsa { .. } | Raw::Ecdsa { .. } => "ring",
            Raw::P521(_) => "p521",
        }
    }

    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
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

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<()> {
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

/// A compact JWS split into what was signed and the signature bytes.
pub fn jws_parts(jws: &str) -> Result<(Vec<u8>, Vec<u8>)> {
    let (input, signature) = jws.rsplit_once('.').ok_or("a JWS without dots")?;
    let signature = np_agent::util::b64::decode(signature)?;
    Ok((input.as_bytes().to_vec(), signature))
}
