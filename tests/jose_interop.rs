//! Interoperability of `np_agent::jose` with the two Python JOSE libraries
//! partners most often test against: PyJWT and jwcrypto, run as `python3`
//! child processes.
//!
//! (a) our PS256/ES256/ES384/ES512 assertions verify in both, with our
//!     published JWKS loaded by `PyJWKSet.from_json` and `JWKSet.from_json`,
//!     and both compute our `kid` as the RFC 7638 thumbprint;
//! (b) their PS256/ES256/ES512 tokens, keys and JWKS made in Python verify
//!     with `verify_compact`;
//! (c) their tokens tampered with, `alg: none` and HS256 are refused.
//!
//! Missing Python modules fail the test (CI installs them):
//! `pip install pyjwt cryptography jwcrypto`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use np_agent::jose::{
    Alg, DEFAULT_ACCEPTED, JoseError, Jwks, SignatureProblem, SigningKey, generate_pkcs8_pem,
    verify_compact,
};
use np_agent::util::{b64, random, time};
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Stdio};

const INSTALL_HINT: &str = "pip install pyjwt cryptography jwcrypto";

/// The Python side. Mode `verify`: check our tokens; mode `sign`: make keys,
/// a JWKS and tokens. JSON in on stdin, JSON out on stdout; exit 3 when a
/// module is missing.
const PYTHON: &str = r#"
import json, sys
try:
    import jwt
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm
    from jwcrypto import jwk as cjwk, jwt as cjwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
except ImportError as e:
    print(f"python module missing: {e.name}", file=sys.stderr)
    sys.exit(3)

def refused(check):
    try:
        check()
    except Exception:
        return True
    return False

def verify(req):
    text = req["jwks"]
    pyjwt_set = jwt.PyJWKSet.from_json(text)
    jwcrypto_set = cjwk.JWKSet.from_json(text)
    out = {"results": [], "thumbprints": {}}
    for key in jwcrypto_set["keys"]:
        out["thumbprints"][key.key_id] = key.thumbprint()
    for item in req["tokens"]:
        alg, token, aud = item["alg"], item["token"], item["aud"]
        header = jwt.get_unverified_header(token)
        pyjwk = pyjwt_set[header["kid"]]
        by_pyjwt = jwt.decode(token, key=pyjwk, algorithms=[alg], audience=aud)
        by_jwcrypto = json.loads(cjwt.JWT(jwt=token, key=jwcrypto_set, algs=[alg], expected_type="JWS").claims)
        tampered = item["tampered"]
        out["results"].append({
            "alg": alg,
            "header": header,
            "pyjwt": by_pyjwt,
            "jwcrypto": by_jwcrypto,
            "pyjwt_refuses_tampered": refused(lambda: jwt.decode(tampered, key=pyjwk, algorithms=[alg], audience=aud)),
            "jwcrypto_refuses_tampered": refused(lambda: cjwt.JWT(jwt=tampered, key=jwcrypto_set, algs=[alg], expected_type="JWS")),
        })
    return out

def sign(req):
    claims = req["claims"]
    keys, tokens, thumbprints = [], [], {}
    curves = {"ES256": (ec.SECP256R1(), "P-256"), "ES512": (ec.SECP521R1(), "P-521")}
    for alg in ["PS256", "ES256", "ES512"]:
        kid = "pyjwt-" + alg
        if alg == "PS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            public = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
        else:
            private = ec.generate_private_key(curves[alg][0])
            public = json.loads(ECAlgorithm.to_jwk(private.public_key()))
        public.update({"kid": kid, "use": "sig"})
        keys.append(public)
        thumbprints[kid] = cjwk.JWK(**public).thumbprint()
        tokens.append({"lib": "pyjwt", "alg": alg, "kid": kid,
                       "token": jwt.encode(claims, private, algorithm=alg, headers={"kid": kid})})

        kid = "jwcrypto-" + alg
        if alg == "PS256":
            key = cjwk.JWK.generate(kty="RSA", size=2048, kid=kid, alg=alg, use="sig")
        else:
            key = cjwk.JWK.generate(kty="EC", crv=curves[alg][1], kid=kid, alg=alg, use="sig")
        token = cjwt.JWT(header={"alg": alg, "kid": kid, "typ": "JWT"}, claims=claims)
        token.make_signed_token(key)
        keys.append(json.loads(key.export_public()))
        thumbprints[kid] = key.thumbprint()
        tokens.append({"lib": "jwcrypto", "alg": alg, "kid": kid, "token": token.serialize()})
    return {
        "jwks": json.dumps({"keys": keys}),
        "tokens": tokens,
        "thumbprints": thumbprints,
        "none": jwt.encode(claims, None, algorithm="none"),
        "hs256": jwt.encode(claims, "a-shared-secret-that-is-32-bytes-long", algorithm="HS256"),
    }

request = json.load(sys.stdin)
print(json.dumps({"verify": verify, "sign": sign}[sys.argv[1]](request)))
"#;

/// Runs the Python side in `mode`; fails the test, with the install hint,
/// when Python or a module is missing.
fn python(mode: &str, request: &Value) -> Value {
    let mut child = Command::new("python3")
        .args(["-c", PYTHON, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); install Python 3, then {INSTALL_HINT}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(3) {
        panic!("{}; run: {INSTALL_HINT}", stderr.trim());
    }
    assert!(output.status.success(), "python3 {mode} failed:\n{stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn claims(iss: &str, aud: &str) -> Value {
    let now = time::now_unix();
    json!({
        "iss": iss,
        "sub": "2.16.528.1.1007.3.3.12345678",
        "aud": aud,
        "authorizer": "2.16.840.1.113883.2.4.6.1.44446666",
        "patient": "urn:oid:2.16.840.1.113883.2.4.6.3.999999151",
        "iat": now,
        "exp": now + 60,
        "jti": random::uuid_v4().unwrap(),
    })
}

/// The token with one character of its payload changed, signature kept.
fn tamper(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut payload = b64::decode(parts[1]).unwrap();
    let at = payload.iter().position(|b| *b == b'2').unwrap();
    payload[at] = b'3';
    format!("{}.{}.{}", parts[0], b64::encode(&payload), parts[2])
}

#[test]
fn our_tokens_and_jwks_verify_in_pyjwt_and_jwcrypto() {
    let aud = "https://np.partner.example/oauth/token";
    let keys: Vec<SigningKey> = [
        (Alg::Ps256, None),
        (Alg::Es256, None),
        // A configured, non-thumbprint kid in VIPLive's style.
        (
            Alg::Es384,
            Some("b6672857bc46214ec6840efa048787dfc2948ada-ES384".to_owned()),
        ),
        (Alg::Es512, None),
    ]
    .into_iter()
    .map(|(alg, kid)| {
        SigningKey::from_pkcs8_pem(&generate_pkcs8_pem(alg).unwrap(), alg, kid).unwrap()
    })
    .collect();
    let jwks = Jwks::new(keys.iter().map(SigningKey::public_jwk).collect()).unwrap();
    let mut expected = Vec::new();
    let tokens: Vec<Value> = keys
        .iter()
        .map(|key| {
            let claims = claims("https://np.hospital.example", aud);
            let token = key.sign_jwt(claims.to_string().as_bytes()).unwrap();
            expected.push(claims);
            json!({"alg": key.alg().name(), "aud": aud, "token": token, "tampered": tamper(&token)})
        })
        .collect();

    let answer = python("verify", &json!({"jwks": jwks.to_json(), "tokens": tokens}));

    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), keys.len());
    for ((result, key), claims) in results.iter().zip(&keys).zip(&expected) {
        let alg = key.alg().name();
        assert_eq!(result["alg"], alg);
        assert_eq!(result["pyjwt"], *claims, "{alg} claims via PyJWT");
        assert_eq!(result["jwcrypto"], *claims, "{alg} claims via jwcrypto");
        assert_eq!(
            result["header"],
            json!({"alg": alg, "typ": "JWT", "kid": key.kid()})
        );
        assert_eq!(result["pyjwt_refuses_tampered"], true, "{alg}");
        assert_eq!(result["jwcrypto_refuses_tampered"], true, "{alg}");
        assert_eq!(
            answer["thumbprints"][key.kid()],
            key.public_jwk().thumbprint(),
            "{alg}: RFC 7638 thumbprint per jwcrypto"
        );
    }
}

#[test]
fn python_tokens_verify_with_verify_compact() {
    let claims = claims(
        "https://np.partner.example",
        "https://np.hospital.example/oauth/token",
    );
    let answer = python("sign", &json!({ "claims": claims }));
    let jwks = Jwks::parse(answer["jwks"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!((jwks.keys.len(), jwks.skipped), (6, 0));
    for key in &jwks.keys {
        let kid = key.kid().unwrap();
        assert_eq!(
            answer["thumbprints"][kid],
            key.thumbprint(),
            "{kid}: RFC 7638 thumbprint"
        );
    }
    let tokens = answer["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 6);
    for item in tokens {
        let (lib, alg) = (item["lib"].as_str().unwrap(), item["alg"].as_str().unwrap());
        let token = item["token"].as_str().unwrap();
        let verified = verify_compact(token, &jwks, DEFAULT_ACCEPTED)
            .unwrap_or_else(|e| panic!("{lib} {alg}: {e}"));
        assert_eq!(verified.alg().name(), alg, "{lib}");
        assert_eq!(verified.kid(), item["kid"].as_str(), "{lib} {alg}");
        let payload: Value = serde_json::from_slice(verified.payload()).unwrap();
        assert_eq!(payload, claims, "{lib} {alg}");
    }
}

#[test]
fn tampered_and_hostile_python_tokens_are_refused() {
    let claims = claims(
        "https://np.partner.example",
        "https://np.hospital.example/oauth/token",
    );
    let answer = python("sign", &json!({ "claims": claims }));
    let jwks = Jwks::parse(answer["jwks"].as_str().unwrap().as_bytes()).unwrap();
    for item in answer["tokens"].as_array().unwrap() {
        let (lib, alg) = (item["lib"].as_str().unwrap(), item["alg"].as_str().unwrap());
        let tampered = tamper(item["token"].as_str().unwrap());
        let e = verify_compact(&tampered, &jwks, DEFAULT_ACCEPTED).unwrap_err();
        assert!(
            matches!(
                e,
                JoseError::BadSignature {
                    problem: SignatureProblem::Invalid,
                    ..
                }
            ),
            "{lib} {alg}: {e}"
        );
    }
    let none = answer["none"].as_str().unwrap();
    assert_eq!(
        verify_compact(none, &jwks, DEFAULT_ACCEPTED).unwrap_err(),
        JoseError::AlgNone
    );
    let hs256 = answer["hs256"].as_str().unwrap();
    assert!(matches!(
        verify_compact(hs256, &jwks, DEFAULT_ACCEPTED).unwrap_err(),
        JoseError::AlgHmac { .. }
    ));
}
