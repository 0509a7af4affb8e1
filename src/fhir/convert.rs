//! XML ⇄ JSON for FHIR resources, driven by the element tables.
//!
//! The rules are those of the FHIR XML and JSON pages (identical for STU3 and
//! R4 in everything used here):
//!
//! * XML elements are in `http://hl7.org/fhir`; a primitive carries its value
//!   in a `value` attribute; `Element.id` and `Extension.url` are attributes.
//! * In JSON a primitive's `id` and `extension` live in a shadow property
//!   `_name`; for repeating primitives both arrays line up and use `null`
//!   where one side has nothing.
//! * A repeating element is always a JSON array, a single one never is.
//! * Resources inside `contained`, `Bundle.entry.resource`,
//!   `Parameters.parameter.resource` (and any other `Resource` element) are
//!   wrapped in an XML element named after the resource type; in JSON they
//!   carry `resourceType`.
//! * Choice elements are named with the type appended (`valueQuantity`).
//! * `Narrative.div` is XHTML in XML and an XHTML string in JSON.
//! * JSON primitives are `true`/`false` for boolean, numbers for integer,
//!   positiveInt, unsignedInt and decimal (a decimal keeps its digits),
//!   strings for everything else.
//! * XML elements are written in definition order.

use serde_json::{Map, Number, Value};

use super::error::{FhirError, Location, safe_name};
use super::narrative;
use super::table::{self, Child, Ctx, Def, JsonKind, Kind, Prim, Table};
use super::xml::{self, Element, FHIR_NS, Node, Ns};
use super::{FhirVersion, Limits};

/// Nesting guard for JSON → XML on values that did not come through
/// [`super::parse_json`] (which already caps depth).
const MAX_WRITE_DEPTH: usize = 256;

/// The shadow element (`_name`) of a primitive: an `Element` (`id`, `extension`).
const SHADOW_CTX: Ctx = Ctx {
    path: "Element",
    base: None,
};

/// Converts a FHIR XML resource into its JSON form.
pub fn xml_to_json(
    bytes: &[u8],
    version: FhirVersion,
    limits: &Limits,
) -> Result<Value, FhirError> {
    let (root, text) = xml::parse(bytes, limits)?;
    let reader = XmlIn {
        table: table::table(version),
        text,
    };
    reader.root(&root)
}

/// Converts a FHIR JSON resource (as from [`super::parse_json`]) into XML,
/// with an XML declaration and elements in definition order.
pub fn json_to_xml(value: &Value, version: FhirVersion) -> Result<String, FhirError> {
    let writer = XmlOut {
        table: table::table(version),
    };
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    writer.resource(&mut out, value, "", true, 0)?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// XML → JSON

struct XmlIn<'a> {
    table: &'static Table,
    text: &'a str,
}

impl XmlIn<'_> {
    fn at(&self, el: &Element, path: &str) -> Location {
        Location::at(self.text, el.pos, path)
    }

    fn invalid(&self, el: &Element, path: &str, reason: &'static str) -> FhirError {
        FhirError::Invalid {
            at: self.at(el, path),
            reason,
        }
    }

    fn root(&self, el: &Element) -> Result<Value, FhirError> {
        for a in &el.attrs {
            // xsi:schemaLocation and friends are allowed on the root only.
            if a.ns != Ns::Xsi {
                let path = safe_name(&el.name);
                return Err(self.invalid(el, path, "unexpected attribute on a resource"));
            }
        }
        self.resource(el, "")
    }

    /// A resource element (`<Patient>`); `prefix` is the path of the element
    /// that wraps it, empty at the root.
    fn resource(&self, el: &Element, prefix: &str) -> Result<Value, FhirError> {
        let name = safe_name(&el.name);
        let path = if prefix.is_empty() {
            name.to_owned()
        } else {
            prefix.to_owned()
        };
        if el.ns != Ns::Fhir {
            return Err(FhirError::NotAResource {
                at: self.at(el, &path),
                reason: "the element is not in the fhir namespace",
            });
        }
        let ctx = self
            .table
            .resource(&el.name)
            .ok_or_else(|| FhirError::NotAResource {
                at: self.at(el, &path),
                reason: "unknown resource type",
            })?;
        // Root attributes were checked by the caller.
        if !prefix.is_empty() && !el.attrs.is_empty() {
            return Err(self.invalid(el, &path, "unexpected attribute on a resource"));
        }
        let mut obj = Map::new();
        obj.insert("resourceType".into(), Value::String(ctx.path.to_owned()));
        self.members(el, ctx, &path, &mut obj)?;
        Ok(Value::Object(obj))
    }

    /// A complex, backbone or Element-typed element: attributes (`id`, `url`)
    /// and children.
    fn complex(&self, el: &Element, ctx: Ctx, path: &str) -> Result<Value, FhirError> {
        let mut obj = Map::new();
        for a in &el.attrs {
            if a.ns != Ns::None {
                return Err(self.invalid(el, path, "unexpected namespaced attribute"));
            }
            let child = self.table.child(ctx, &a.name);
            match child.map(|c| c.def.kind) {
                Some(Kind::Attr(p)) => {
                    let v = self.prim_value(el, p, &a.value, path)?;
                    obj.insert(a.name.clone(), v);
                }
                _ => {
                    return Err(FhirError::UnknownElement {
                        at: self.at(el, &format!("{path}.@{}", safe_name(&a.name))),
                    });
                }
            }
        }
        self.members(el, ctx, path, &mut obj)?;
        Ok(Value::Object(obj))
    }

    /// The child elements of `el`, grouped by name, into `obj`.
    fn members(
        &self,
        el: &Element,
        ctx: Ctx,
        path: &str,
        obj: &mut Map<String, Value>,
    ) -> Result<(), FhirError> {
        let mut groups: Vec<(Child, Kind, Vec<&Element>)> = Vec::new();
        for node in &el.children {
            let c = match node {
                Node::Text(t) => {
                    if t.chars().all(xml::is_xml_space) {
                        continue;
                    }
                    return Err(self.invalid(el, path, "text inside a fhir element"));
                }
                Node::Element(c) => c,
            };
            let child_path = format!("{path}.{}", safe_name(&c.name));
            let child =
                self.table
                    .child(ctx, &c.name)
                    .ok_or_else(|| FhirError::UnknownElement {
                        at: self.at(c, &child_path),
                    })?;
            let kind = child
                .kind(self.table)
                .ok_or_else(|| FhirError::UnknownElement {
                    at: self.at(c, &child_path),
                })?;
            let want_ns = if kind == Kind::Xhtml {
                Ns::Xhtml
            } else {
                Ns::Fhir
            };
            if c.ns != want_ns {
                return Err(self.invalid(c, &child_path, "element in the wrong namespace"));
            }
            match groups
                .iter_mut()
                .find(|(g, _, _)| g.def.path == child.def.path && g.choice == child.choice)
            {
                Some((_, _, items)) => items.push(c),
                None => {
                    if groups.iter().any(|(g, _, _)| g.def.path == child.def.path) {
                        return Err(self.invalid(
                            c,
                            &child_path,
                            "more than one type for a choice element",
                        ));
                    }
                    groups.push((child, kind, vec![c]));
                }
            }
        }
        for (child, kind, items) in groups {
            let name = json_name(&child);
            let base_path = format!("{path}.{name}");
            if !child.def.many && items.len() > 1 {
                let second = items.get(1).copied().unwrap_or(el);
                return Err(self.invalid(
                    second,
                    &base_path,
                    "element repeats but allows only one",
                ));
            }
            let item_path = |i: usize| {
                if child.def.many {
                    format!("{base_path}[{i}]")
                } else {
                    base_path.clone()
                }
            };
            match kind {
                Kind::Prim(p) => {
                    let mut values = Vec::with_capacity(items.len());
                    let mut shadows = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let (v, s) = self.primitive(item, p, &item_path(i))?;
                        values.push(v);
                        shadows.push(s);
                    }
                    put_primitive(obj, &name, child.def.many, values, shadows);
                }
                Kind::Attr(_) => {
                    let first = items.first().copied().unwrap_or(el);
                    return Err(self.invalid(
                        first,
                        &base_path,
                        "this element is an xml attribute",
                    ));
                }
                Kind::Resource => {
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        out.push(self.wrapped_resource(item, &item_path(i))?);
                    }
                    put(obj, name, child.def.many, out);
                }
                Kind::Xhtml => {
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        let p = item_path(i);
                        narrative::check_tree(item, &p).map_err(|e| self.position(e, item))?;
                        out.push(Value::String(narrative::to_string(item)));
                    }
                    put(obj, name, child.def.many, out);
                }
                Kind::Complex(_) | Kind::Backbone | Kind::Group | Kind::ContentRef(_) => {
                    let ctx = self.table.ctx_for(&child.def, kind).ok_or_else(|| {
                        FhirError::UnknownElement {
                            at: Location::path(base_path.clone()),
                        }
                    })?;
                    let mut out = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        out.push(self.complex(item, ctx, &item_path(i))?);
                    }
                    put(obj, name, child.def.many, out);
                }
                Kind::Choice(_) => {
                    return Err(FhirError::UnknownElement {
                        at: Location::path(base_path),
                    });
                }
            }
        }
        Ok(())
    }

    fn position(&self, e: FhirError, el: &Element) -> FhirError {
        match e {
            FhirError::UnsafeNarrative { at, reason } => FhirError::UnsafeNarrative {
                at: Location::at(self.text, el.pos, at.path),
                reason,
            },
            other => other,
        }
    }

    /// `<resource><Patient>…</Patient></resource>`.
    fn wrapped_resource(&self, el: &Element, path: &str) -> Result<Value, FhirError> {
        if !el.attrs.is_empty() {
            return Err(self.invalid(el, path, "unexpected attribute on a resource wrapper"));
        }
        let mut inner = None;
        for node in &el.children {
            match node {
                Node::Text(t) if t.chars().all(xml::is_xml_space) => {}
                Node::Text(_) => return Err(self.invalid(el, path, "text inside a fhir element")),
                Node::Element(c) => {
                    if inner.replace(c).is_some() {
                        return Err(self.invalid(
                            c,
                            path,
                            "more than one resource in a resource element",
                        ));
                    }
                }
            }
        }
        let inner =
            inner.ok_or_else(|| self.invalid(el, path, "resource element without a resource"))?;
        self.resource(inner, path)
    }

    /// A primitive element: its JSON value and its shadow (`id`, `extension`).
    fn primitive(
        &self,
        el: &Element,
        p: Prim,
        path: &str,
    ) -> Result<(Option<Value>, Option<Value>), FhirError> {
        let mut value = None;
        let mut shadow = Map::new();
        for a in &el.attrs {
            match (a.ns, a.name.as_str()) {
                (Ns::None, "value") => value = Some(self.prim_value(el, p, &a.value, path)?),
                (Ns::None, "id") => {
                    let id = self.prim_value(el, Prim::String, &a.value, path)?;
                    shadow.insert("id".into(), id);
                }
                _ => {
                    return Err(FhirError::UnknownElement {
                        at: self.at(el, &format!("{path}.@{}", safe_name(&a.name))),
                    });
                }
            }
        }
        let mut extensions = Vec::new();
        let ext_ctx = self
            .table
            .complex("Extension")
            .ok_or_else(|| FhirError::UnknownElement {
                at: Location::path("Extension"),
            })?;
        for node in &el.children {
            match node {
                Node::Text(t) if t.chars().all(xml::is_xml_space) => {}
                Node::Text(_) => return Err(self.invalid(el, path, "text inside a fhir element")),
                Node::Element(c) => {
                    let child_path = format!("{path}.{}", safe_name(&c.name));
                    if c.name != "extension" {
                        return Err(FhirError::UnknownElement {
                            at: self.at(c, &child_path),
                        });
                    }
                    if c.ns != Ns::Fhir {
                        return Err(self.invalid(c, &child_path, "element in the wrong namespace"));
                    }
                    let i = extensions.len();
                    extensions.push(self.complex(c, ext_ctx, &format!("{child_path}[{i}]"))?);
                }
            }
        }
        if !extensions.is_empty() {
            shadow.insert("extension".into(), Value::Array(extensions));
        }
        if value.is_none() && shadow.is_empty() {
            return Err(self.invalid(el, path, "primitive element without value or extension"));
        }
        let shadow = (!shadow.is_empty()).then_some(Value::Object(shadow));
        Ok((value, shadow))
    }

    fn prim_value(
        &self,
        el: &Element,
        p: Prim,
        text: &str,
        path: &str,
    ) -> Result<Value, FhirError> {
        prim_from_text(p, text).map_err(|reason| self.invalid(el, path, reason))
    }
}

/// The JSON name of a child: its path leaf, or the choice name.
fn json_name(child: &Child) -> String {
    match child.choice {
        Some(code) => table::choice_name(&child.def, code),
        None => table::leaf(child.def.path).to_owned(),
    }
}

fn put(obj: &mut Map<String, Value>, name: String, many: bool, mut items: Vec<Value>) {
    let v = if many {
        Value::Array(items)
    } else {
        items.pop().unwrap_or(Value::Null)
    };
    obj.insert(name, v);
}

fn put_primitive(
    obj: &mut Map<String, Value>,
    name: &str,
    many: bool,
    values: Vec<Option<Value>>,
    shadows: Vec<Option<Value>>,
) {
    let any_value = values.iter().any(Option::is_some);
    let any_shadow = shadows.iter().any(Option::is_some);
    if many {
        if any_value {
            obj.insert(
                name.to_owned(),
                Value::Array(
                    values
                        .into_iter()
                        .map(|v| v.unwrap_or(Value::Null))
                        .collect(),
                ),
            );
        }
        if any_shadow {
            obj.insert(
                format!("_{name}"),
                Value::Array(
                    shadows
                        .into_iter()
                        .map(|v| v.unwrap_or(Value::Null))
                        .collect(),
                ),
            );
        }
    } else {
        if let Some(Some(v)) = values.into_iter().next() {
            obj.insert(name.to_owned(), v);
        }
        if let Some(Some(s)) = shadows.into_iter().next() {
            obj.insert(format!("_{name}"), s);
        }
    }
}

/// The JSON value of a primitive given as XML text.
fn prim_from_text(p: Prim, text: &str) -> Result<Value, &'static str> {
    if text.is_empty() {
        return Err("empty value");
    }
    match p.json_kind() {
        JsonKind::Boolean => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("boolean must be true or false"),
        },
        JsonKind::Integer => {
            let n = parse_integer(p, text)?;
            Ok(Value::Number(Number::from(n)))
        }
        JsonKind::Decimal => {
            if !is_decimal(text) {
                return Err("malformed decimal");
            }
            text.parse::<Number>()
                .map(Value::Number)
                .map_err(|_| "malformed decimal")
        }
        JsonKind::String => Ok(Value::String(text.to_owned())),
    }
}

/// FHIR integer: `-?(0|[1-9][0-9]*)`, 32 bits; positiveInt ≥ 1, unsignedInt ≥ 0.
fn parse_integer(p: Prim, text: &str) -> Result<i64, &'static str> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    if !canonical {
        return Err("malformed integer");
    }
    let n: i64 = text.parse().map_err(|_| "integer out of range")?;
    if n < i64::from(i32::MIN) || n > i64::from(i32::MAX) {
        return Err("integer out of range");
    }
    match p {
        Prim::PositiveInt if n < 1 => Err("positiveInt must be at least 1"),
        Prim::UnsignedInt if n < 0 => Err("unsignedInt must not be negative"),
        _ => Ok(n),
    }
}

/// FHIR decimal (also JSON's number grammar):
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_decimal(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

// ---------------------------------------------------------------------------
// JSON → XML

struct XmlOut {
    table: &'static Table,
}

/// One element to write: the definition, the chosen type, the value and the
/// shadow (`_name`).
struct Member<'v> {
    child: Child,
    kind: Kind,
    name: String,
    value: Option<&'v Value>,
    shadow: Option<&'v Value>,
}

fn invalid(path: &str, reason: &'static str) -> FhirError {
    FhirError::Invalid {
        at: Location::path(path),
        reason,
    }
}

fn unknown(path: String) -> FhirError {
    FhirError::UnknownElement {
        at: Location::path(path),
    }
}

impl XmlOut {
    /// Writes `<Type xmlns=…>…</Type>` for a JSON resource.
    fn resource(
        &self,
        out: &mut String,
        value: &Value,
        prefix: &str,
        root: bool,
        depth: usize,
    ) -> Result<(), FhirError> {
        let at = if prefix.is_empty() { "$" } else { prefix };
        let Value::Object(obj) = value else {
            return Err(FhirError::NotAResource {
                at: Location::path(at),
                reason: "not an object",
            });
        };
        let rt = match obj.get("resourceType") {
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(FhirError::NotAResource {
                    at: Location::path(at),
                    reason: "resourceType is not a string",
                });
            }
            None => {
                return Err(FhirError::NotAResource {
                    at: Location::path(at),
                    reason: "resourceType is missing",
                });
            }
        };
        let ctx = self
            .table
            .resource(rt)
            .ok_or_else(|| FhirError::NotAResource {
                at: Location::path(at),
                reason: "unknown resource type",
            })?;
        let path = if prefix.is_empty() {
            ctx.path.to_owned()
        } else {
            prefix.to_owned()
        };
        out.push('<');
        out.push_str(ctx.path);
        if root {
            out.push_str(" xmlns=\"");
            out.push_str(FHIR_NS);
            out.push('"');
        }
        let members = self.members(obj, ctx, &path, true)?;
        self.body(out, ctx.path, &members, &path, depth)
    }

    /// Sorts the properties of `obj` into elements (definition order) and
    /// attributes; writes the attributes right away is the caller's job.
    fn members<'v>(
        &self,
        obj: &'v Map<String, Value>,
        ctx: Ctx,
        path: &str,
        resource: bool,
    ) -> Result<Vec<Member<'v>>, FhirError> {
        let mut members: Vec<Member<'v>> = Vec::with_capacity(obj.len());
        for (key, value) in obj {
            if resource && key == "resourceType" {
                continue;
            }
            let (name, is_shadow) = match key.strip_prefix('_') {
                Some(n) => (n, true),
                None => (key.as_str(), false),
            };
            let child = self
                .table
                .child(ctx, name)
                .ok_or_else(|| unknown(format!("{path}.{}", safe_name(key))))?;
            let kind = child
                .kind(self.table)
                .ok_or_else(|| unknown(format!("{path}.{}", safe_name(key))))?;
            if is_shadow && !matches!(kind, Kind::Prim(_)) {
                return Err(unknown(format!("{path}.{}", safe_name(key))));
            }
            let slot = members.iter_mut().find(|m| m.name == name);
            let m = match slot {
                Some(m) => m,
                None => {
                    if members.iter().any(|m| m.child.def.path == child.def.path) {
                        return Err(invalid(
                            &format!("{path}.{name}"),
                            "more than one type for a choice element",
                        ));
                    }
                    members.push(Member {
                        child,
                        kind,
                        name: name.to_owned(),
                        value: None,
                        shadow: None,
                    });
                    let last = members.len() - 1;
                    &mut members[last]
                }
            };
            if is_shadow {
                m.shadow = Some(value);
            } else {
                m.value = Some(value);
            }
        }
        members.sort_by(|a, b| (a.child.def.order, &a.name).cmp(&(b.child.def.order, &b.name)));
        Ok(members)
    }

    /// Writes the attributes of the open start tag, then either `/>` or the
    /// child elements and the end tag.
    fn body(
        &self,
        out: &mut String,
        tag: &str,
        members: &[Member<'_>],
        path: &str,
        depth: usize,
    ) -> Result<(), FhirError> {
        if depth > MAX_WRITE_DEPTH {
            return Err(FhirError::TooDeep {
                limit: MAX_WRITE_DEPTH,
                at: Location::path(path),
            });
        }
        for m in members.iter() {
            let Kind::Attr(prim) = m.kind else { continue };
            let p = format!("{path}.{}", m.name);
            if m.shadow.is_some() {
                return Err(invalid(&p, "this element cannot carry extensions"));
            }
            let text = attr_text(prim, m.value, &p)?;
            out.push(' ');
            out.push_str(&m.name);
            out.push_str("=\"");
            xml::escape_attr(out, &text);
            out.push('"');
        }
        let elements: Vec<&Member<'_>> = members
            .iter()
            .filter(|m| !matches!(m.kind, Kind::Attr(_)))
            .collect();
        if elements.is_empty() {
            out.push_str("/>");
            return Ok(());
        }
        out.push('>');
        for m in elements {
            self.member(out, m, path, depth)?;
        }
        out.push_str("</");
        out.push_str(tag);
        out.push('>');
        Ok(())
    }

    fn member(
        &self,
        out: &mut String,
        m: &Member<'_>,
        path: &str,
        depth: usize,
    ) -> Result<(), FhirError> {
        let base_path = format!("{path}.{}", m.name);
        let values = items(m.value, &m.child.def, &base_path)?;
        let shadows = items(m.shadow, &m.child.def, &format!("{path}._{}", m.name))?;
        let n = match (&values, &shadows) {
            (Some(v), Some(s)) if v.len() != s.len() => {
                return Err(invalid(
                    &base_path,
                    "value and extension arrays differ in length",
                ));
            }
            (Some(v), _) => v.len(),
            (None, Some(s)) => s.len(),
            (None, None) => 0,
        };
        for i in 0..n {
            let p = if m.child.def.many {
                format!("{base_path}[{i}]")
            } else {
                base_path.clone()
            };
            let v = values
                .as_ref()
                .and_then(|v| v.get(i).copied())
                .filter(|v| !v.is_null());
            let s = shadows
                .as_ref()
                .and_then(|s| s.get(i).copied())
                .filter(|s| !s.is_null());
            match m.kind {
                Kind::Prim(p_kind) => self.primitive(out, &m.name, p_kind, v, s, &p, depth)?,
                Kind::Resource => {
                    let v = v.ok_or_else(|| invalid(&p, "null where a resource is expected"))?;
                    out.push('<');
                    out.push_str(&m.name);
                    out.push('>');
                    self.resource(out, v, &p, false, depth + 1)?;
                    out.push_str("</");
                    out.push_str(&m.name);
                    out.push('>');
                }
                Kind::Xhtml => {
                    let Some(Value::String(div)) = v else {
                        return Err(invalid(&p, "narrative must be a string"));
                    };
                    let tree = narrative::parse_narrative(div, &p)?;
                    narrative::write_into(out, &tree);
                }
                Kind::Complex(_) | Kind::Backbone | Kind::Group | Kind::ContentRef(_) => {
                    let Some(Value::Object(obj)) = v else {
                        return Err(invalid(&p, "expected an object"));
                    };
                    let ctx = self
                        .table
                        .ctx_for(&m.child.def, m.kind)
                        .ok_or_else(|| unknown(p.clone()))?;
                    out.push('<');
                    out.push_str(&m.name);
                    let members = self.members(obj, ctx, &p, false)?;
                    self.body(out, &m.name, &members, &p, depth + 1)?;
                }
                Kind::Attr(_) | Kind::Choice(_) => return Err(unknown(p)),
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn primitive(
        &self,
        out: &mut String,
        name: &str,
        p: Prim,
        v: Option<&Value>,
        s: Option<&Value>,
        path: &str,
        depth: usize,
    ) -> Result<(), FhirError> {
        if v.is_none() && s.is_none() {
            return Err(invalid(path, "null without extension"));
        }
        out.push('<');
        out.push_str(name);
        let shadow_members = match s {
            Some(Value::Object(obj)) => {
                self.members(obj, SHADOW_CTX, &format!("{path}._"), false)?
            }
            Some(_) => return Err(invalid(path, "extension property must be an object")),
            None => Vec::new(),
        };
        // The shadow's id goes out as an attribute before `value`.
        for m in shadow_members.iter() {
            let Kind::Attr(prim) = m.kind else { continue };
            let text = attr_text(prim, m.value, path)?;
            out.push_str(" id=\"");
            xml::escape_attr(out, &text);
            out.push('"');
        }
        if let Some(v) = v {
            let text = prim_to_text(p, v).map_err(|reason| invalid(path, reason))?;
            check_string(&text, path)?;
            out.push_str(" value=\"");
            xml::escape_attr(out, &text);
            out.push('"');
        }
        let elements: Vec<&Member<'_>> = shadow_members
            .iter()
            .filter(|m| !matches!(m.kind, Kind::Attr(_)))
            .collect();
        if elements.is_empty() {
            out.push_str("/>");
            return Ok(());
        }
        out.push('>');
        for m in elements {
            self.member(out, m, path, depth + 1)?;
        }
        out.push_str("</");
        out.push_str(name);
        out.push('>');
        Ok(())
    }
}

/// The items of a JSON property: an array for a repeating element (a single
/// value is taken as one item), one value otherwise.
fn items<'v>(
    value: Option<&'v Value>,
    def: &Def,
    path: &str,
) -> Result<Option<Vec<&'v Value>>, FhirError> {
    Ok(match value {
        None => None,
        Some(Value::Array(a)) if def.many => Some(a.iter().collect()),
        Some(Value::Array(_)) => {
            return Err(invalid(path, "array for an element that allows only one"));
        }
        Some(v) => Some(vec![v]),
    })
}

/// The XML text of a JSON primitive, with its JSON type checked.
fn prim_to_text(p: Prim, v: &Value) -> Result<String, &'static str> {
    match (p.json_kind(), v) {
        (JsonKind::Boolean, Value::Bool(b)) => Ok(b.to_string()),
        (JsonKind::Boolean, _) => Err("expected true or false"),
        (JsonKind::Integer, Value::Number(n)) => {
            let text = n.to_string();
            parse_integer(p, &text)?;
            Ok(text)
        }
        (JsonKind::Integer, _) => Err("expected an integer"),
        (JsonKind::Decimal, Value::Number(n)) => Ok(n.to_string()),
        (JsonKind::Decimal, _) => Err("expected a number"),
        (JsonKind::String, Value::String(s)) if s.is_empty() => Err("empty string"),
        (JsonKind::String, Value::String(s)) => Ok(s.clone()),
        (JsonKind::String, _) => Err("expected a string"),
    }
}

/// The text of an attribute-like primitive (`id`, `url`), checked as its type.
fn attr_text(p: Prim, value: Option<&Value>, path: &str) -> Result<String, FhirError> {
    let v = value.ok_or_else(|| invalid(path, "expected a string"))?;
    let text = prim_to_text(p, v).map_err(|reason| invalid(path, reason))?;
    check_string(&text, path)?;
    Ok(text)
}

/// XML cannot carry every character a JSON string can.
fn check_string(s: &str, path: &str) -> Result<(), FhirError> {
    if s.chars().all(xml::is_xml_char) {
        Ok(())
    } else {
        Err(invalid(path, "character not allowed in xml"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r4_json(xml: &str) -> Result<Value, FhirError> {
        xml_to_json(xml.as_bytes(), FhirVersion::R4, &Limits::default())
    }

    fn r4_xml(json: &str) -> Result<String, FhirError> {
        let v: Value = serde_json::from_str(json).unwrap();
        json_to_xml(&v, FhirVersion::R4)
    }

    #[test]
    fn primitives_and_shadows() {
        let xml = r#"<Patient xmlns="http://hl7.org/fhir">
  <id value="p1"/>
  <active value="true"/>
  <name>
    <given value="Jan"/>
    <given id="g2"><extension url="http://example.org/e"><valueString value="x"/></extension></given>
    <given value="K."/>
  </name>
  <birthDate value="1970-01-01"><extension url="http://example.org/t"><valueDateTime value="1970-01-01T10:00:00Z"/></extension></birthDate>
  <multipleBirthInteger value="2"/>
</Patient>"#;
        let json = r4_json(xml).unwrap();
        let want: Value = serde_json::from_str(
            r#"{"resourceType":"Patient","id":"p1","active":true,
            "name":[{"given":["Jan",null,"K."],"_given":[null,{"id":"g2","extension":[{"url":"http://example.org/e","valueString":"x"}]},null]}],
            "birthDate":"1970-01-01","_birthDate":{"extension":[{"url":"http://example.org/t","valueDateTime":"1970-01-01T10:00:00Z"}]},
            "multipleBirthInteger":2}"#,
        )
        .unwrap();
        assert_eq!(json, want);
        let back = json_to_xml(&json, FhirVersion::R4).unwrap();
        assert_eq!(r4_json(&back).unwrap(), want);
        assert!(back.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Patient xmlns=\"http://hl7.org/fhir\"><id value=\"p1\"/><active value=\"true\"/><name><given value=\"Jan\"/><given id=\"g2\"><extension url="), "{back}");
    }

    #[test]
    fn decimals_keep_their_text() {
        let xml = r#"<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code><valueQuantity><value value="1.50"/><unit value="mg"/></valueQuantity></Observation>"#;
        let json = r4_json(xml).unwrap();
        assert_eq!(json["valueQuantity"]["value"].to_string(), "1.50");
        let back = json_to_xml(&json, FhirVersion::R4).unwrap();
        assert!(back.contains("<value value=\"1.50\"/>"), "{back}");
        for bad in ["1.", ".5", "+1", "1e", "0x1", "1,5", " 1"] {
            let doc = xml.replace("1.50", bad);
            assert!(
                matches!(r4_json(&doc), Err(FhirError::Invalid { .. })),
                "{bad}"
            );
        }
        for good in [
            "-0.0",
            "1e-3",
            "123456789012345678901234567890.000000000000000001",
        ] {
            let doc = xml.replace("1.50", good);
            assert_eq!(
                r4_json(&doc).unwrap()["valueQuantity"]["value"].to_string(),
                good
            );
        }
    }

    #[test]
    fn elements_come_out_in_definition_order() {
        let json = r#"{"resourceType":"Patient","gender":"male","name":[{"given":["A"],"family":"B"}],"id":"x","active":false,"meta":{"versionId":"1"}}"#;
        let xml = r4_xml(json).unwrap();
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Patient xmlns=\"http://hl7.org/fhir\"><id value=\"x\"/><meta><versionId value=\"1\"/></meta><active value=\"false\"/><name><family value=\"B\"/><given value=\"A\"/></name><gender value=\"male\"/></Patient>"
        );
    }

    #[test]
    fn contained_and_bundle_resources_are_wrapped() {
        let json = r##"{"resourceType":"Bundle","type":"collection","entry":[{"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient","contained":[{"resourceType":"Organization","id":"o"}],"managingOrganization":{"reference":"#o"}}}]}"##;
        let xml = r4_xml(json).unwrap();
        assert!(xml.contains("<entry><fullUrl value=\"urn:uuid:1\"/><resource><Patient><contained><Organization><id value=\"o\"/></Organization></contained><managingOrganization><reference value=\"#o\"/></managingOrganization></Patient></resource></entry>"), "{xml}");
        assert_eq!(
            r4_json(&xml).unwrap(),
            serde_json::from_str::<Value>(json).unwrap()
        );
    }

    #[test]
    fn extension_url_and_element_id_are_attributes() {
        let json = r#"{"resourceType":"Patient","extension":[{"url":"http://example.org/a","valueCodeableConcept":{"id":"c1","text":"t"}}]}"#;
        let xml = r4_xml(json).unwrap();
        assert!(xml.contains("<extension url=\"http://example.org/a\"><valueCodeableConcept id=\"c1\"><text value=\"t\"/></valueCodeableConcept></extension>"), "{xml}");
        // As elements they are refused.
        let bad = r#"<Patient xmlns="http://hl7.org/fhir"><extension><url value="x"/></extension></Patient>"#;
        assert!(matches!(r4_json(bad), Err(FhirError::Invalid { .. })));
        let bad = r#"<Patient xmlns="http://hl7.org/fhir" id="x"/>"#;
        assert!(r4_json(bad).is_err());
    }

    #[test]
    fn narrative_is_carried_as_a_string() {
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><p>Jan &amp; <b>Piet</b></p></div></text></Patient>"#;
        let json = r4_json(xml).unwrap();
        assert_eq!(
            json["text"]["div"],
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Jan &amp; <b>Piet</b></p></div>"
        );
        let back = json_to_xml(&json, FhirVersion::R4).unwrap();
        assert!(back.contains("<text><status value=\"generated\"/><div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Jan &amp; <b>Piet</b></p></div></text>"), "{back}");
        let script = xml.replace("<b>Piet</b>", "<script>x</script>");
        match r4_json(&script) {
            Err(FhirError::UnsafeNarrative { at, .. }) => {
                assert_eq!(at.path, "Patient.text.div");
                assert_eq!(at.line, 1);
            }
            other => panic!("{other:?}"),
        }
        let mut v = json.clone();
        v["text"]["div"] = Value::String(
            "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"javascript:x\">a</a></div>"
                .into(),
        );
        assert!(matches!(
            json_to_xml(&v, FhirVersion::R4),
            Err(FhirError::UnsafeNarrative { .. })
        ));
    }

    #[test]
    fn unknown_elements_are_refused_with_their_path() {
        let xml = "<Patient xmlns=\"http://hl7.org/fhir\">\n<name><family value=\"x\"/><nickname value=\"y\"/></name></Patient>";
        match r4_json(xml) {
            Err(FhirError::UnknownElement { at }) => {
                assert_eq!(at.path, "Patient.name[0].nickname");
                assert_eq!((at.line, at.column), (2, 26));
            }
            other => panic!("{other:?}"),
        }
        match r4_xml(r#"{"resourceType":"Patient","name":[{"nickname":"y"}]}"#) {
            Err(FhirError::UnknownElement { at }) => {
                assert_eq!(at.path, "Patient.name[0].nickname")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r4_xml(r#"{"resourceType":"Patient","value":"y"}"#),
            Err(FhirError::UnknownElement { .. })
        ));
        assert!(matches!(
            r4_xml(r#"{"resourceType":"Patient","_name":[{}]}"#),
            Err(FhirError::UnknownElement { .. })
        ));
    }

    #[test]
    fn namespaces_are_checked() {
        for xml in [
            r#"<Patient><id value="x"/></Patient>"#,
            r#"<Patient xmlns="http://hl7.org/fhir/"><id value="x"/></Patient>"#,
            r#"<p:Patient xmlns:p="urn:other"><p:id value="x"/></p:Patient>"#,
        ] {
            assert!(
                matches!(r4_json(xml), Err(FhirError::NotAResource { .. })),
                "{xml}"
            );
        }
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><id xmlns="urn:x" value="x"/></Patient>"#;
        assert!(matches!(r4_json(xml), Err(FhirError::Invalid { .. })));
        let xml = r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div>x</div></text></Patient>"#;
        assert!(matches!(r4_json(xml), Err(FhirError::Invalid { .. })));
        // A prefix for the FHIR namespace is fine.
        let xml = r#"<f:Patient xmlns:f="http://hl7.org/fhir" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://hl7.org/fhir x.xsd"><f:id value="x"/></f:Patient>"#;
        assert_eq!(r4_json(xml).unwrap()["id"], "x");
    }

    #[test]
    fn cardinality_and_types_are_checked() {
        let twice = r#"<Patient xmlns="http://hl7.org/fhir"><active value="true"/><active value="false"/></Patient>"#;
        assert!(matches!(
            r4_json(twice),
            Err(FhirError::Invalid {
                reason: "element repeats but allows only one",
                ..
            })
        ));
        for (field, bad) in [
            ("active", "yes"),
            ("multipleBirthInteger", "01"),
            ("multipleBirthInteger", "2147483648"),
            ("multipleBirthInteger", "1.0"),
            ("active", ""),
        ] {
            let doc = format!(
                r#"<Patient xmlns="http://hl7.org/fhir"><{field} value="{bad}"/></Patient>"#
            );
            assert!(
                matches!(r4_json(&doc), Err(FhirError::Invalid { .. })),
                "{doc}"
            );
        }
        let empty = r#"<Patient xmlns="http://hl7.org/fhir"><active/></Patient>"#;
        assert!(matches!(r4_json(empty), Err(FhirError::Invalid { .. })));
        let text =
            r#"<Patient xmlns="http://hl7.org/fhir"><active value="true">x</active></Patient>"#;
        assert!(r4_json(text).is_err());
        let two_choices = r#"<Patient xmlns="http://hl7.org/fhir"><deceasedBoolean value="true"/><deceasedDateTime value="2020"/></Patient>"#;
        assert!(r4_json(two_choices).is_err());
        for json in [
            r#"{"resourceType":"Patient","active":"true"}"#,
            r#"{"resourceType":"Patient","multipleBirthInteger":1.5}"#,
            r#"{"resourceType":"Patient","multipleBirthInteger":"1"}"#,
            r#"{"resourceType":"Patient","gender":1}"#,
            r#"{"resourceType":"Patient","gender":""}"#,
            r#"{"resourceType":"Patient","gender":["male"]}"#,
            r#"{"resourceType":"Patient","name":["x"]}"#,
            r#"{"resourceType":"Patient","name":[{"given":["a"],"_given":[null,null]}]}"#,
            r#"{"resourceType":"Patient","name":[{"given":[null]}]}"#,
            r#"{"resourceType":"Patient","deceasedBoolean":true,"deceasedDateTime":"2020"}"#,
            r#"{"resourceType":"Patient","gender":"a\u0001b"}"#,
            r#"{"resourceType":"Patient","contained":[{"id":"x"}]}"#,
            r#"{"resourceType":"Patient","name":[{"id":""}]}"#,
            r#"{"resourceType":"Patient","name":[{"id":1}]}"#,
            r#"{"resourceType":"Patient","gender":"male","_gender":{"id":""}}"#,
            r#"{"resourceType":"Patient","extension":[{"url":"u","_url":{"id":"x"}}]}"#,
            r#"{"resourceType":"Nope"}"#,
            r#"{"resourceType":"Patient","text":{"status":"generated","div":"plain"}}"#,
        ] {
            assert!(r4_xml(json).is_err(), "{json}");
        }
        // A single object where an array is expected is taken as one item.
        let xml = r4_xml(r#"{"resourceType":"Patient","identifier":{"value":"1"}}"#).unwrap();
        assert!(
            xml.contains("<identifier><value value=\"1\"/></identifier>"),
            "{xml}"
        );
    }

    #[test]
    fn strings_with_newlines_and_markup_survive() {
        let json = r#"{"resourceType":"Patient","name":[{"text":"a\nb\tc\r\nd <e> & \"f\""}]}"#;
        let xml = r4_xml(json).unwrap();
        assert_eq!(
            r4_json(&xml).unwrap(),
            serde_json::from_str::<Value>(json).unwrap()
        );
    }

    #[test]
    fn stu3_and_r4_differ() {
        let xml = r#"<Task xmlns="http://hl7.org/fhir"><status value="requested"/><intent value="proposal"/><requester><agent><display value="x"/></agent></requester></Task>"#;
        assert!(xml_to_json(xml.as_bytes(), FhirVersion::Stu3, &Limits::default()).is_ok());
        assert!(matches!(
            xml_to_json(xml.as_bytes(), FhirVersion::R4, &Limits::default()),
            Err(FhirError::UnknownElement { .. })
        ));
    }

    #[test]
    fn integer_and_decimal_grammar() {
        assert_eq!(parse_integer(Prim::Integer, "-5"), Ok(-5));
        assert!(parse_integer(Prim::Integer, "-0").is_err());
        assert!(parse_integer(Prim::Integer, "").is_err());
        assert!(parse_integer(Prim::PositiveInt, "0").is_err());
        assert!(parse_integer(Prim::UnsignedInt, "-1").is_err());
        assert_eq!(parse_integer(Prim::UnsignedInt, "0"), Ok(0));
        for ok in ["0", "-0", "0.0", "10", "1.5e10", "1E-2", "-1.25"] {
            assert!(is_decimal(ok), "{ok}");
        }
        for bad in [
            "", "-", "00", "01", "1.", ".1", "1e", "1e+", "+1", "1.5.5", "NaN", "Infinity",
        ] {
            assert!(!is_decimal(bad), "{bad}");
        }
    }
}
