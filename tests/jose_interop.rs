//! Interoperability of `np_agent::jose` with the two Python JOSE libraries
//! partners most often test against: PyJWT and jwcrypto, run as Python
//! child processes.
//!
//! (a) our PS256/ES256/ES384/ES512 assertions verify in both, with our
//!     published JWKS loaded by `PyJWKSet.from_json` and `JWKSet.from_json`,
//!     and both compute our `kid` as the RFC 7638 thumbprint;
//! (b) their PS256/ES256/ES512 tokens, keys and JWKS made in Python verify
//!     with `verify_compact`;
//! (c) their tokens tampered with, `alg: none` and HS256 are refused.
//!
//! The test provisions its peers itself: the first run creates a virtual
//! environment with `python3 -m venv` in `<target dir>/tmp/py-interop/venv`
//! and installs the pinned, hashed `tests/jose_interop.requirements.txt`
//! into it; later runs reuse it until that file changes. A lock file beside
//! it lets parallel test binaries share one build. `NP_TEST_PYTHON=/path/to/python`
//! uses that interpreter instead (it must import PyJWT, jwcrypto and
//! cryptography). When neither works the tests fail with one line that says
//! how to fix it; they never pass without the Python side.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use np_agent::jose::{
    Alg, DEFAULT_ACCEPTED, JoseError, Jwks, SignatureProblem, SigningKey, generate_pkcs8_pem,
    verify_compact,
};
use np_agent::util::{b64, random, time};
use rustix::fs::{FlockOperation, flock};
use serde_json::{Value, json};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The pinned peers with their hashes. Their text is also the marker that
/// says which set a virtual environment holds: a changed pin rebuilds it.
const REQUIREMENTS: &str = include_str!("jose_interop.requirements.txt");

/// Names an interpreter to use instead of the test's own environment.
const OVERRIDE: &str = "NP_TEST_PYTHON";

/// Everything [`PYTHON`] imports: a usable interpreter runs this cleanly.
const IMPORTS: &str = "import jwt, jwt.algorithms, jwcrypto.jwk, jwcrypto.jwt, \
    cryptography.hazmat.primitives.asymmetric.ec, cryptography.hazmat.primitives.asymmetric.rsa";

/// The way out offered by every provisioning failure.
const OR_OVERRIDE: &str =
    "or set NP_TEST_PYTHON to a python that has PyJWT, jwcrypto and cryptography";

/// The Python side. Mode `verify`: check our tokens; mode `sign`: make keys,
/// a JWKS and tokens. JSON in on stdin, JSON out on stdout.
const PYTHON: &str = r#"
import json, sys
import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwcrypto import jwk as cjwk, jwt as cjwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

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

/// Runs the Python side in `mode` with the provisioned interpreter.
fn python(mode: &str, request: &Value) -> Value {
    let interpreter = interpreter();
    let mut child = Command::new(interpreter)
        .args(["-c", PYTHON, mode])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", interpreter.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "python {mode} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The interpreter with the peers: `NP_TEST_PYTHON` when set, else the
/// test's own virtual environment, built on first use. Decided once per
/// process; when impossible every test panics with the same one-line fix.
fn interpreter() -> &'static Path {
    static CHOSEN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| match std::env::var_os(OVERRIDE) {
        Some(python) if !python.is_empty() => overridden(PathBuf::from(python)),
        _ => provision(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("py-interop")),
    });
    match chosen {
        Ok(python) => python,
        Err(fix) => panic!("{fix}"),
    }
}

/// `NP_TEST_PYTHON`, if it imports the peers.
fn overridden(python: PathBuf) -> Result<PathBuf, String> {
    match imports(&python) {
        Ok(()) => Ok(python),
        Err(why) => Err(format!(
            "{OVERRIDE}={} cannot import PyJWT, jwcrypto and cryptography ({why}): \
             install them into it, or unset {OVERRIDE} to let the test build its own venv",
            python.display()
        )),
    }
}

/// `base/venv/bin/python`, after making sure the venv holds exactly
/// [`REQUIREMENTS`]: reused when its marker matches and it imports the
/// peers, else rebuilt. `base/lock` serialises test binaries running at once;
/// the marker is renamed into place last, so an interrupted build is redone.
fn provision(base: &Path) -> Result<PathBuf, String> {
    let venv = base.join("venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join("requirements.txt");
    let io = |what: &str, path: &Path, e: std::io::Error| {
        format!("cannot {what} {}: {e}", path.display())
    };
    std::fs::create_dir_all(base).map_err(|e| io("create", base, e))?;
    let lock_path = base.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io("open", &lock_path, e))?;
    flock(&lock, FlockOperation::LockExclusive).map_err(|e| io("lock", &lock_path, e.into()))?;

    if std::fs::read_to_string(&marker).is_ok_and(|held| held == REQUIREMENTS)
        && imports(&python).is_ok()
    {
        return Ok(python);
    }
    eprintln!(
        "installing the Python peers of tests/jose_interop.requirements.txt into {}",
        venv.display()
    );
    match std::fs::remove_dir_all(&venv) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", &venv, e)),
        _ => {}
    }
    let made = run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .map_err(|e| format!("{e}: install Python 3, {OR_OVERRIDE}"))?;
    if !made.status.success() {
        let stderr = String::from_utf8_lossy(&made.stderr);
        // Debian's python3 without python3-venv says so on stdout or stderr.
        let said = format!("{}{stderr}", String::from_utf8_lossy(&made.stdout));
        if said.contains("ensurepip") || said.contains("No module named venv") {
            return Err(format!(
                "python3 cannot create a virtual environment (no venv/ensurepip module): \
                 install it (Debian/Ubuntu: apt-get install python3-venv), {OR_OVERRIDE}"
            ));
        }
        return Err(format!(
            "python3 -m venv {} failed ({}): {OR_OVERRIDE}",
            venv.display(),
            gist(&made)
        ));
    }
    let pending = venv.join("requirements.txt.pending");
    std::fs::write(&pending, REQUIREMENTS).map_err(|e| io("write", &pending, e))?;
    let installed = run(Command::new(&python)
        .args(["-m", "pip", "install", "--require-hashes", "--no-input"])
        .args(["--disable-pip-version-check", "--quiet", "--requirement"])
        .arg(&pending))
    .map_err(|e| format!("{e}: {OR_OVERRIDE}"))?;
    if !installed.status.success() {
        return Err(format!(
            "pip could not install tests/jose_interop.requirements.txt into {} ({}): \
             this needs network access to PyPI once; {OR_OVERRIDE}",
            venv.display(),
            gist(&installed)
        ));
    }
    imports(&python).map_err(|why| {
        format!(
            "{} cannot import the peers just installed ({why}): remove {} and retry",
            python.display(),
            venv.display()
        )
    })?;
    std::fs::rename(&pending, &marker).map_err(|e| io("write", &marker, e))?;
    Ok(python)
}

/// Whether `python` runs [`IMPORTS`]; the error is one line.
fn imports(python: &Path) -> Result<(), String> {
    let output = run(Command::new(python).args(["-c", IMPORTS]))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(gist(&output))
    }
}

/// `command`'s output, or one line naming the program that could not start.
fn run(command: &mut Command) -> Result<Output, String> {
    command.stdin(Stdio::null()).output().map_err(|e| {
        let program = command.get_program().to_string_lossy();
        format!("cannot run {program} ({e})")
    })
}

/// The line of a failed tool's stderr that says what went wrong: its last
/// `ERROR` line (pip), else its last line (a Python traceback ends with the
/// error), else its exit status.
fn gist(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines
        .iter()
        .rev()
        .find(|l| l.starts_with("ERROR"))
        .or(lines.last())
    {
        Some(line) => (*line).to_owned(),
        None => output.status.to_string(),
    }
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
