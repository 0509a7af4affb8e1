#!/usr/bin/env python3
"""Copy the published FHIR examples used by tests/fhir_examples.rs into
tests/fixtures/fhir/{stu3,r4}/.

Sources (npm registry; each tarball checked against its pinned sha512):

* hl7.fhir.r3.examples 3.0.2 and hl7.fhir.r4.examples 4.0.1 (HL7 Inc, CC0-1.0):
  the official JSON examples of the FHIR specification, copied unchanged.
* fhir 3.3.1 (FHIR.js by Lantana Consulting Group; package.json says ISC,
  its LICENSE file is Apache-2.0): `test/data/stu3/` holds copies of official
  STU3 examples in both XML and JSON. Three such pairs are copied unchanged
  into stu3/pairs/. Two of the JSON files are byte-for-byte the official 3.0.2
  JSON; condition-example2 is the 3.0.0 spelling (onsetDateTime instead of
  onsetString), still valid 3.0.2.

Rerun: `python3 tools/fhir-table/fixtures.py` (or `--from DIR` with the three
.tgz files already downloaded), then commit tests/fixtures/fhir.
"""

import argparse
import io
import os
import sys
import tarfile

sys.path.insert(0, os.path.dirname(__file__))
import generate  # noqa: E402  (same directory: package pins and fetch())

FHIRJS = {
    "name": "fhir",
    "version": "3.3.1",
    "integrity": "sha512-YXLRgn4TVzWfF5HuoP5mPrzuuRIS34EDe1Z8e1P7f7nQoN81PELZGegoKIi4xMvN4gSSPm/ZS29SJsUjVa82rw==",
}

COMMON = [
    "Bundle-bundle-transaction.json",
    "Bundle-ussg-fht.json",
    "Observation-example.json",
    "Observation-blood-pressure.json",
    "Observation-f003.json",
    "Condition-example.json",
    "AllergyIntolerance-example.json",
    "MedicationStatement-example001.json",
    "MedicationRequest-medrx0302.json",
    "DocumentReference-example.json",
    "Binary-example.json",
    "Task-example1.json",
    "OperationOutcome-101.json",
    "Consent-consent-example-basic.json",
    "ActivityDefinition-heart-valve-replacement.json",
    "Questionnaire-3141.json",
]

FILES = {
    # The 3.0.2 package has no Patient-example.json; Patient-null.json is the
    # specification's JSON edge-case Patient (nulls in primitive arrays).
    "stu3": COMMON + ["Patient-null.json", "Parameters-example.json"],
    "r4": COMMON
    + ["Patient-example.json", "Observation-decimal.json", "Consent-consent-example-pkb.json"],
}

PAIRS = ["bundle-transaction", "medicationStatement", "condition-example2"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="from_dir", help="directory holding the .tgz files")
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    args = ap.parse_args()
    base = os.path.join(args.root, "tests", "fixtures", "fhir")
    for key, names in FILES.items():
        data = generate.fetch(generate.PACKAGES[key], args.from_dir)
        out = os.path.join(base, key)
        os.makedirs(out, exist_ok=True)
        copy(data, {"package/" + n: os.path.join(out, n) for n in names})
    data = generate.fetch(FHIRJS, args.from_dir)
    out = os.path.join(base, "stu3", "pairs")
    os.makedirs(out, exist_ok=True)
    wanted = {}
    for p in PAIRS:
        for ext in ("json", "xml"):
            wanted["package/test/data/stu3/%s.%s" % (p, ext)] = os.path.join(out, "%s.%s" % (p, ext))
    copy(data, wanted)


def copy(data, wanted):
    found = set()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.name in wanted:
                f = tar.extractfile(member)
                if f is None:
                    continue
                with open(wanted[member.name], "wb") as out:
                    out.write(f.read())
                found.add(member.name)
                print("wrote %s" % os.path.normpath(wanted[member.name]))
    missing = set(wanted) - found
    if missing:
        generate.fail("not in the package: %s" % ", ".join(sorted(missing)))


if __name__ == "__main__":
    main()
