#!/usr/bin/env python3
"""Generate src/fhir/table_stu3.rs and src/fhir/table_r4.rs from the official
FHIR StructureDefinitions.

Source: the HL7 example packages `hl7.fhir.r3.examples` 3.0.2 and
`hl7.fhir.r4.examples` 4.0.1 (author "HL7 Inc", licence CC0-1.0) as served by
the npm registry. Besides the example instances they carry the core
StructureDefinition JSON of every resource, datatype and primitive of that
release (`package/StructureDefinition-<Name>.json`, `fhirVersion` 3.0.2 and
4.0.1 respectively), which is what this script reads.

Rerun (needs python3 >= 3.8 and npm; nothing else):

    python3 tools/fhir-table/generate.py            # fetches with `npm pack`, checks the pinned sha512
    python3 tools/fhir-table/generate.py --from DIR # DIR holds the two .tgz files already

and commit the two regenerated files. The output is deterministic: running it
twice gives identical files.

What is emitted per release (see src/fhir/table.rs for the Rust types):

* TYPES: every resource, complex datatype and primitive datatype with its kind
  and, for resources and complex types, the base whose elements it inherits
  (Resource, DomainResource, Element, BackboneElement).
* DEFS: every element path of every resource and complex datatype, sorted by
  path, with its position in the definition (XML element order), whether it
  repeats (max != "1") and what it holds: a primitive (kind), an XML attribute
  primitive (`Element.id`, `Extension.url`), a complex type by name, a
  backbone element (children under its own path; `Group` when typed `Element`
  and therefore without modifierExtension), a resource, a choice `[x]` with its
  allowed types, a content reference to another path, or narrative XHTML.
  Elements inherited unchanged from the four base types are not repeated per
  type: the Rust lookup falls back to the base (the generator checks that
  every omitted element matches the base definition).
"""

import argparse
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

PACKAGES = {
    "stu3": {
        "name": "hl7.fhir.r3.examples",
        "version": "3.0.2",
        "fhir_version": "3.0.2",
        "integrity": "sha512-HhSNNmBZKvqzfEpSdPaAmbZB4mphC7rDZNOS7OjwQaupS0PoV/SZNdoppLKFr4Q0TKxVV0UY8Hl0e0o7qSXWRw==",
        "out": "src/fhir/table_stu3.rs",
    },
    "r4": {
        "name": "hl7.fhir.r4.examples",
        "version": "4.0.1",
        "fhir_version": "4.0.1",
        "integrity": "sha512-DXBdIZOeQaSKIgCU7w6HOC7sw/6BzylmipLkBW4f//pT+Bc94x+8LImwTdvaNThPJoOzpBzvxAzNqjeu3X/zLw==",
        "out": "src/fhir/table_r4.rs",
    },
}

BASES = ("Resource", "DomainResource", "Element", "BackboneElement")

# FHIR primitive type code -> Rust `Prim` variant.
PRIMS = {
    "boolean": "Boolean",
    "integer": "Integer",
    "positiveInt": "PositiveInt",
    "unsignedInt": "UnsignedInt",
    "decimal": "Decimal",
    "string": "String",
    "code": "Code",
    "id": "Id",
    "markdown": "Markdown",
    "uri": "Uri",
    "url": "Url",
    "canonical": "Canonical",
    "oid": "Oid",
    "uuid": "Uuid",
    "base64Binary": "Base64Binary",
    "instant": "Instant",
    "date": "Date",
    "dateTime": "DateTime",
    "time": "Time",
}

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
SYSTEM_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}


def fail(msg):
    sys.exit("generate.py: " + msg)


def fetch(spec, from_dir):
    """Returns the bytes of the package tarball, checked against the pinned integrity."""
    fname = "%s-%s.tgz" % (spec["name"], spec["version"])
    if not spec.get("integrity"):
        fail("%s: no pinned integrity" % fname)
    if from_dir:
        path = os.path.join(from_dir, fname)
        with open(path, "rb") as f:
            data = f.read()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                ["npm", "pack", "--silent", "%s@%s" % (spec["name"], spec["version"])],
                cwd=tmp,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            with open(os.path.join(tmp, fname), "rb") as f:
                data = f.read()
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != spec["integrity"]:
        fail("%s: integrity %s does not match the pinned %s" % (fname, digest, spec["integrity"]))
    return data


def load_definitions(data, fhir_version):
    """All StructureDefinitions of the core specification (specialisations and primitives)."""
    sds = {}
    constraints = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            base = os.path.basename(member.name)
            if not (base.startswith("StructureDefinition-") and base.endswith(".json")):
                continue
            f = tar.extractfile(member)
            if f is None:
                continue
            sd = json.load(f)
            if sd.get("resourceType") != "StructureDefinition":
                continue
            if sd.get("fhirVersion") != fhir_version:
                continue
            if not sd.get("url", "").startswith("http://hl7.org/fhir/StructureDefinition/"):
                continue
            kind = sd.get("kind")
            if kind not in ("resource", "complex-type", "primitive-type"):
                continue
            if sd.get("derivation") == "constraint":
                if kind == "complex-type" and sd.get("type") != "Extension":
                    constraints[sd["id"]] = sd["type"]
                continue
            if sd["id"] != sd.get("type", sd["id"]):
                fail("%s: id and type differ" % sd["id"])
            sds[sd["id"]] = sd
    for name in BASES:
        if name not in sds:
            fail("base type %s missing" % name)
    return sds, constraints


def base_of(sds, name):
    """The first of BASES on the baseDefinition chain of `name` (excluding itself)."""
    seen = set()
    cur = name
    while True:
        sd = sds[cur]
        parent = sd.get("baseDefinition", "").rsplit("/", 1)[-1]
        if not parent:
            return None
        if parent in BASES:
            return parent
        if parent in seen or parent not in sds:
            fail("%s: broken base chain at %s" % (name, parent))
        seen.add(parent)
        cur = parent


def type_codes(elem):
    """The FHIR type codes of an element, de-duplicated in definition order."""
    out = []
    for t in elem.get("type", []):
        code = t.get("code")
        if code is None:
            fail("%s: type without code" % elem["path"])
        if code.startswith("http://hl7.org/fhirpath/System."):
            ext = [e for e in t.get("extension", []) if e.get("url") == FHIR_TYPE_EXT]
            if ext:
                code = ext[0].get("valueUrl") or ext[0].get("valueUri")
            else:
                code = SYSTEM_TYPES.get(code)
            if code is None:
                fail("%s: unknown system type" % elem["path"])
        if code not in out:
            out.append(code)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="from_dir", help="directory holding the package .tgz files")
    ap.add_argument("--root", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    args = ap.parse_args()
    for key, spec in PACKAGES.items():
        data = fetch(spec, args.from_dir)
        sds, constraints = load_definitions(data, spec["fhir_version"])
        text = render(key, spec, sds, constraints)
        path = os.path.join(args.root, spec["out"])
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        print("wrote %s" % os.path.normpath(path))


def render(key, spec, sds, constraints):
    prims = {n for n, sd in sds.items() if sd["kind"] == "primitive-type"}
    for p in prims:
        if p != "xhtml" and p not in PRIMS:
            fail("primitive %s has no Prim variant" % p)

    types = []  # (name, kind, base)
    for name in sorted(sds):
        sd = sds[name]
        if sd["kind"] == "primitive-type":
            if name == "xhtml":
                continue
            types.append((name, "T::Primitive(Prim::%s)" % PRIMS[name], "None"))
            continue
        base = base_of(sds, name)
        if name in BASES:
            types.append((name, "T::Abstract", "None" if base is None else base))
            continue
        if base is None:
            fail("%s has no base" % name)
        kind = "T::Resource" if sd["kind"] == "resource" else "T::Complex"
        if sd.get("abstract"):
            kind = "T::Abstract"
        types.append((name, kind, base))
    for alias, target in sorted(constraints.items()):
        if alias not in sds and target in sds and alias.isalpha():
            types.append((alias, "T::Alias(%s)" % json.dumps(target), "None"))
    types.sort(key=lambda t: t[0].encode())
    known_types = {t[0] for t in types}

    # Base definitions, to check what we leave out per type.
    base_defs = {}
    for b in BASES:
        for e in sds[b]["snapshot"]["element"]:
            if "." in e["path"]:
                base_defs[e["path"]] = (e.get("max"), type_codes(e), e.get("representation", []))

    defs = []  # (path, order, many, kind)
    choice_lists = {}
    for name in sorted(sds):
        sd = sds[name]
        if sd["kind"] == "primitive-type":
            continue
        elements = sd["snapshot"]["element"]
        all_paths = {e["path"] for e in elements}
        for index, e in enumerate(elements):
            path = e["path"]
            if "." not in path:
                if path != name:
                    fail("%s: snapshot root is %s" % (name, path))
                continue
            if not path.startswith(name + "."):
                fail("%s: foreign path %s" % (name, path))
            base_path = (e.get("base") or {}).get("path", path)
            if name not in BASES and base_path.split(".")[0] in BASES and base_path != path:
                want = base_defs.get(base_path)
                got = (e.get("max"), type_codes(e), e.get("representation", []))
                if want is None or want != got:
                    fail("%s: differs from its base %s: %r vs %r" % (path, base_path, got, want))
                continue
            many = e.get("max") != "1"
            if e.get("max") not in ("0", "1", "*") and not e.get("max", "").isdigit():
                fail("%s: odd max %r" % (path, e.get("max")))
            if "contentReference" in e:
                target = e["contentReference"]
                if not target.startswith("#"):
                    fail("%s: contentReference %s" % (path, target))
                target = target[1:]
                if target not in all_paths:
                    fail("%s: contentReference to unknown %s" % (path, target))
                defs.append((path, index, many, "ContentRef(%s)" % json.dumps(target)))
                continue
            codes = type_codes(e)
            reps = e.get("representation", [])
            if path.endswith("[x]"):
                for c in codes:
                    if c not in known_types:
                        fail("%s: choice type %s unknown" % (path, c))
                lst = tuple(codes)
                if lst not in choice_lists:
                    choice_lists[lst] = "C%d" % len(choice_lists)
                defs.append((path, index, many, "Choice(%s)" % choice_lists[lst]))
                continue
            if len(codes) != 1:
                fail("%s: %d types outside a choice" % (path, len(codes)))
            code = codes[0]
            if reps and reps != ["xmlAttr"]:
                fail("%s: representation %r" % (path, reps))
            if code == "xhtml":
                kind = "Xhtml"
            elif code in PRIMS:
                kind = ("Attr(Prim::%s)" if reps == ["xmlAttr"] else "Prim(Prim::%s)") % PRIMS[code]
            elif reps:
                fail("%s: attribute of complex type %s" % (path, code))
            elif code == "Resource":
                kind = "Resource"
            elif code in ("BackboneElement", "Element"):
                if not any(p.startswith(path + ".") for p in all_paths):
                    fail("%s: %s without children" % (path, code))
                kind = "Backbone" if code == "BackboneElement" else "Group"
            elif code in known_types:
                kind = "Complex(%s)" % json.dumps(code)
            else:
                fail("%s: unknown type %s" % (path, code))
            defs.append((path, index, many, kind))
    defs.sort(key=lambda d: d[0].encode())
    for a, b in zip(defs, defs[1:]):
        if a[0] == b[0]:
            fail("duplicate path %s" % a[0])
    for d in defs:
        if d[1] > 65535:
            fail("%s: order too large" % d[0])

    out = io.StringIO()
    w = out.write
    w("// @generated by tools/fhir-table/generate.py -- do not edit by hand.\n")
    w("\n")
    w("//! FHIR %s element table, read from the core StructureDefinitions in the\n" % spec["fhir_version"])
    w("//! npm package `%s@%s` (HL7 Inc, CC0-1.0), integrity\n" % (spec["name"], spec["version"]))
    w("//! `%s`.\n" % spec["integrity"])
    w("//! Regenerate with `python3 tools/fhir-table/generate.py` (see\n")
    w("//! tools/fhir-table/README.md). Not formatted by rustfmt (`#[rustfmt::skip]`\n")
    w("//! on the module) so that it stays one row per element.\n")
    w("\n")
    w("use super::table::{Base as B, Def, Kind::*, Prim, Table, TypeInfo, TypeKind as T, packed_defs};\n")
    w("\n")
    w("/// The FHIR %s element table.\n" % spec["fhir_version"])
    w("pub(super) static TABLE: Table = Table {\n")
    w("    fhir_version: %s,\n" % json.dumps(spec["fhir_version"]))
    w("    types: TYPES,\n")
    w("    defs: packed_defs!(DEFS, TYPES),\n")
    w("};\n\n")
    for lst, cname in sorted(choice_lists.items(), key=lambda kv: int(kv[1][1:])):
        w("static %s: &[&str] = &[%s];\n" % (cname, ", ".join(json.dumps(c) for c in lst)))
    w("\n")
    w("static TYPES: &[TypeInfo] = &[\n")
    for name, kind, base in types:
        b = "None" if base == "None" else "Some(B::%s)" % base
        w("    TypeInfo::new(%s, %s, %s),\n" % (json.dumps(name), kind, b))
    w("];\n\n")
    w("static DEFS: &[Def] = &[\n")
    for path, index, many, kind in defs:
        w("    Def::new(%s, %d, %s, %s),\n" % (json.dumps(path), index, "true" if many else "false", kind))
    w("];\n")
    return out.getvalue()


if __name__ == "__main__":
    main()
