#!/usr/bin/env python3
"""Fills fuzz/corpus/<target>/ with seed inputs, from the test fixtures and
from the requests, names and headers the tests use, so each target starts
from valid input instead of from nothing.

    python3 fuzz/seed.py          # from the repository root; needs openssl

The corpus is not committed (fuzz/corpus is ignored): run this once before
`cargo fuzz run`; what the fuzzer adds later stays in the same folders.
"""

import base64
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, name, data):
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (folder / name).write_bytes(data)


def files(*patterns):
    out = []
    for pattern in patterns:
        out.extend(sorted(ROOT.glob(pattern)))
    return out


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def openssl(*args, stdin=None):
    return subprocess.run(
        ["openssl", *args], input=stdin, check=True, capture_output=True
    ).stdout


# --- FHIR, Tasks, Mitz ---------------------------------------------------

JSON_FIXTURES = files("tests/fixtures/fhir/**/*.json", "src/demo/sample-bgz.json")
XML_FIXTURES = files("tests/fixtures/**/*.xml")
for f in JSON_FIXTURES:
    put("fhir_json", f.name, f.read_bytes())
for f in XML_FIXTURES:
    put("fhir_xml", f.name, f.read_bytes())
for f in files("tests/fixtures/tasks/**/*.json", "tests/fixtures/tasks/**/*.xml"):
    put("receiver_task", f"{f.parent.name}-{f.name}", f.read_bytes())
for f in files("tests/fixtures/mitz/*.json", "tests/fixtures/mitz/*.xml",
               "src/mitz/sample-notification.json"):
    put("mitz_bundle", f.name, f.read_bytes())
put("mitz_bundle", "datetime", "2026-12-01T10:15:30.1234567+01:00")

# --- HTTP requests (first byte: the piece size) -------------------------

GET = b"GET /fhir/Patient?identifier=x%7C1 HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc\r\n\r\n"
POST_CL = b"POST /oauth/token HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
POST_CHUNKED = (b"POST /fhir/Task HTTP/1.1\r\nhost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=\"v\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
CONTINUE = (b"PUT /fhir/Task/1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Content-Length: 2\r\n\r\n{}")
HTTP10 = b"GET https://np.example:8443/healthz HTTP/1.0\r\n\r\n"
SMUGGLE = (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
for i, msg in enumerate([GET, POST_CL, POST_CHUNKED, CONTINUE, HTTP10, SMUGGLE,
                         POST_CHUNKED + POST_CL + GET]):
    put("http_request", f"request-{i}", bytes([i * 9 % 64]) + msg)

# --- The token form ------------------------------------------------------

FORM = "application/x-www-form-urlencoded\n"
JWT_TYPE = "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
put("token_form", "jwt-bearer",
    FORM + "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"
    f"&assertion=eyJhbGciOiJFUzI1NiJ9.e30.c2ln&client_assertion_type={JWT_TYPE}"
    "&client_assertion=eyJhbGciOiJFUzI1NiJ9.e30.c2ln")
put("token_form", "client-credentials",
    FORM + f"grant_type=client_credentials&client_assertion_type={JWT_TYPE}"
    "&client_assertion=eyJhbGciOiJFUzI1NiJ9.e30.c2ln"
    "&scope=system%2FPatient.read+system%2FObservation.read")
put("token_form", "repeated", FORM + "a=b+c&&empty=&flag&a=d")

# --- JWS, claims, JWKS ---------------------------------------------------

VIPLIVE = (b'{"aud":"ontvanger.nl/token","sub":"2.16.840.1.113883.2.4.6.1.12345678",'
           b'"authorization_base":"5754d12a-bfb0-4e3f-847a-9460b45f3a92",'
           b'"authorizer":"2.16.840.1.113883.2.4.6.1.44446666",'
           b'"patient":"urn:oid:2.16.840.1.113883.2.4.6.3.999999151",'
           b'"iss":"https://fhir.test-datakluis.shared.topicuszorg.nl",'
           b'"exp":1734619249,"iat":1734619244,"jti":"b7f219b7-baae-4af5-8501-f027f32843bd"}')
IUA = (b'{"subject_organization_id":"2.16.840.1.113883.2.4.3.8",'
       b'"subject_id":"smart-Practitioner-71614502","subject_role":"223366009"}')
for name, header in [("es256", b'{"alg":"ES256","kid":"partner-1"}'),
                     ("none", b'{"alg":"none"}'),
                     ("hs256", b'{"alg":"HS256","typ":"JWT"}'),
                     ("crit", b'{"alg":"ES256","crit":["exp"],"exp":1}'),
                     ("jku", b'{"alg":"ES256","jku":"https://evil.example/jwks"}')]:
    token = f"{b64url(header)}.{b64url(VIPLIVE)}.{b64url(b'signature')}"
    put("jws", name, token.encode() + b"\0" + VIPLIVE)
put("jws", "iua", b"\0" + IUA)
put("jws", "claims-only", VIPLIVE)

with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    keys = []
    for curve, crv, size in [("prime256v1", "P-256", 32), ("secp384r1", "P-384", 48)]:
        key = openssl("ecparam", "-name", curve, "-genkey", "-noout")
        der = openssl("ec", "-pubout", "-outform", "DER", stdin=key)
        point = der[-2 * size:]
        keys.append('{"kty":"EC","crv":"%s","x":"%s","y":"%s","use":"sig","kid":"%s"}'
                    % (crv, b64url(point[:size]), b64url(point[size:]), crv))
    rsa = openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048")
    modulus = openssl("rsa", "-noout", "-modulus", stdin=rsa).decode().strip().split("=")[1]
    keys.append('{"kty":"RSA","n":"%s","e":"AQAB","alg":"PS256","kid":"rsa"}'
                % b64url(bytes.fromhex(modulus)))
    put("jwks", "three-keys", '{"keys":[%s]}' % ",".join(keys))
    put("jwks", "one-key", '{"keys":[%s]}' % keys[0])
    put("jwks", "skipped", '{"keys":[{"kty":"oct","k":"c2VjcmV0"},%s]}' % keys[1])
    # A kid that reads like a private member once written with its escape.
    put("jwks", "kid-quote-k", '{"keys":[%s]}' % keys[0].replace('"kid":"P-256"', '"kid":"P-256\\"k"'))

    # --- Certificates: a UZI server certificate, PKIoverheid-style, DNS only
    uzi = "2.16.528.1.1003.1.3.5.5.2-1-12345678-S-87654321-00.000-00000000"
    for name, subj, san in [
        ("uzi", "/CN=np.hospital-b.example",
         f"subjectAltName=otherName:2.5.5.5;UTF8:{uzi},DNS:np.hospital-b.example"),
        ("serial", "/CN=viewer.example/serialNumber=00000001234567890000",
         "subjectAltName=DNS:viewer.example"),
        ("dns", "/CN=a", "subjectAltName=DNS:a.example,DNS:*.b.example"),
    ]:
        key = tmp / f"{name}.key"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", str(key), "-subj", subj, "-addext", san,
                "-days", "30", "-outform", "DER", "-out", str(tmp / f"{name}.der"))
        put("cert_identity", f"{name}.der", (tmp / f"{name}.der").read_bytes())
for selector in ["ura:87654321", "serial:00000001234567890000", "dns:*.example.nl",
                 "sha256:" + ":".join(["ab"] * 32), uzi]:
    put("cert_identity", selector.split(":")[0], selector)

# --- The env file ----------------------------------------------------------

put("env_file", "packaged", (ROOT / "packaging" / "np-agent.env").read_bytes())
put("env_file", "syntax", 'export NP_ORG_URA=12345678\n# c\n; c\nNP_LOG = "debug \\"x\\" \\$y"\n'
    "NP_PUBLIC_URL='https://np.example:8443'\nNP_OUTBOX=/var/lib/a\\\n  b\nBAD LINE\n")
put("env_file", "partner", "NP_PARTNER_HOSPB_KIND=twiin\nNP_PARTNER_HOSPB_CERT=ura:87654321\n"
    "NP_PARTNER_HOSPB_URL=https://np.hospital-b.example:8443\nNP_PARTNER_HOSPB_ALLOW_FROM=10.0.0.0/8\n")

# --- Headers: AORTA-ID (Mitz, Epic), AORTA-Version, X-ZV ------------------

for i, value in enumerate([
    "initialRequestID=6f1c1b52-0a43-4b8e-9d0e-2f7f3b0f5a11; requestID=7c0f5a52-3a1e-4a6b-9d0c-2f6c1e8b4d11",
    "requestID=7c0f5a52-3a1e-4a6b-9d0c-2f6c1e8b4d11",
    "rid:1b9d6bCd-bBf;cid:yA8UM8fHmhde;usr:larts;rol:62247001;org:2.16.528.1.1007.3.3.15123",
    "req=1b9d6bCd-bBf; cid=H54f_8b9d6bC; usr=larts",
    "contentVersion=3.8.0; acceptVersion=3.8",
]):
    put("aorta_ids", f"value-{i}", value)
put("zv_context", "headers",
    "X-ZV-Subject-Organization-Id:urn:oid:2.16.840.1.113883.2.4.3.8\n"
    "X-ZV-Subject-Organization-Ura:12345678\nX-ZV-Subject-Id:smart-Practitioner-71614502\n"
    "X-ZV-Subject-Role:223366009\nX-Request-Id:1b9d6bCd-bBf\n"
    "AORTA-ID:rid:1b9d6bCd-bBf;cid:H54f_8b9d6bC;usr:larts;rol:223366009")
put("zv_context", "signed", b"X-ZV-Subject-Role:223366009\0" + IUA)

# --- Searches and reads: every request the serve tests send ---------------

serve_tests = (ROOT / "src" / "serve" / "tests.rs").read_text()
requests = sorted(set(re.findall(r'get\(&f, "([^"]*)"\)', serve_tests)))
if not requests:
    sys.exit("seed: no requests found in src/serve/tests.rs")
for i, target in enumerate(requests):
    put("search_params", f"request-{i}", target)
put("search_params", "accept", "/Binary/bin-1\napplication/pdf")
put("search_params", "lastn", "/Observation/$lastn?patient=pat-1&max=2&_format=xml")

# --- Outbox names and exports ----------------------------------------------

sample = (ROOT / "src" / "demo" / "sample-bgz.json").read_bytes()
for name in [b"c-42.json", b"c-42.cancel", b"c-42.xml", b"c-42.json.tmp", b".hidden",
             b"bad\xffname.json", b"a" * 250 + b".json", b"../x.json", b"c-42"]:
    put("outbox_export", "name-" + b64url(name)[:40], name + b"\0" + sample)

# --- Codecs, NVI answers, the closed question: small texts ------------------

for i, text in enumerate(["https://sender.example:8443/fhir/stu3/Task?_id=a%20b",
                          "Sun, 06 Nov 1994 08:49:37 GMT", "120", "a=b+c&d=%C3%A9",
                          "Observation?patient=Patient/pat-1"]):
    put("codecs", f"text-{i}", text)
put("nvi_answers", "token", '{"access_token":"x","token_type":"Bearer","expires_in":300}')
put("nvi_answers", "error", '{"error":"invalid_request","error_description":"bad 12345678"}')
put("nvi_answers", "eval", '{"jwe":"eyJh.a.b.c.d"}')

# --- Mitz's answers to the closed question: the SOAP texts its tests use ----

closed_tests = (ROOT / "src" / "mitz" / "closed" / "tests.rs").read_text()
envelopes = re.findall(r'r#"(<s:Envelope.*?</s:Envelope>)"#', closed_tests, re.S)
if not envelopes:
    sys.exit("seed: no SOAP answers found in src/mitz/closed/tests.rs")
for i, envelope in enumerate(envelopes):
    for decision in ["Permit", "Deny"]:
        text = envelope.replace("{decision}", decision).replace(
            "{call_id}", "7c0f5a52-3a1e-4a6b-9d0c-2f6c1e8b4d11")
        put("mitz_closed", f"answer-{i}-{decision}", text)

print(f"seed: corpus in {CORPUS.relative_to(ROOT)}:")
for folder in sorted(CORPUS.iterdir()):
    print(f"  {folder.name}: {len(list(folder.iterdir()))}")
