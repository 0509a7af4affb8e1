//! A hardened XML reader that builds a small tree, and the escaping used when
//! writing XML.
//!
//! quick-xml tokenises; everything that makes XML dangerous is decided here:
//! a DOCTYPE (and with it every entity declaration and external subset) is
//! refused, as are processing instructions other than the XML declaration,
//! entity references other than the five predefined ones, character
//! references to characters XML does not allow, encodings other than UTF-8,
//! and control characters. Namespaces are resolved here too, so that FHIR and
//! XHTML elements are recognised by namespace and not by prefix (other
//! vocabularies, SOAP and XACML for the Mitz closed question, by
//! [`Element::uri`]). Depth and size are capped before anything is allocated
//! per element.

use std::sync::Arc;

use quick_xml::events::{BytesStart, Event};
use quick_xml::reader::Reader;

use super::Limits;
use super::error::{FhirError, Location, Syntax, line_column};

/// The FHIR namespace.
pub const FHIR_NS: &str = "http://hl7.org/fhir";
/// The XHTML namespace (narrative).
pub const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";
const XML_NS: &str = "http://www.w3.org/XML/1998/namespace";
const XSI_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// Attributes (namespace declarations included) allowed on one element. FHIR
/// elements have at most three; narrative XHTML rarely more than a handful.
pub const MAX_ATTRIBUTES: usize = 64;

/// The namespace of an element or attribute, as far as we care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ns {
    /// No namespace (unprefixed attributes, or elements with no default namespace).
    None,
    Fhir,
    Xhtml,
    /// `xml:` (only `xml:lang` and friends).
    Xml,
    /// `xsi:` (schemaLocation on a root; carries no FHIR content).
    Xsi,
    /// Anything else.
    Other,
}

impl Ns {
    fn of(uri: &str) -> Ns {
        match uri {
            "" => Ns::None,
            FHIR_NS => Ns::Fhir,
            XHTML_NS => Ns::Xhtml,
            XML_NS => Ns::Xml,
            XSI_NS => Ns::Xsi,
            _ => Ns::Other,
        }
    }
}

/// An attribute with its value unescaped and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ns: Ns,
    /// Local name (without prefix).
    pub name: String,
    pub value: String,
}

/// A node of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    /// Character data with references resolved and line ends normalised.
    Text(String),
}

/// An element of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    pub ns: Ns,
    /// The namespace URI, empty for none.
    pub uri: Arc<str>,
    /// Local name (without prefix).
    pub name: String,
    /// Attributes other than namespace declarations, in document order.
    pub attrs: Vec<Attr>,
    pub children: Vec<Node>,
    /// Byte offset of the start tag in the document.
    pub pos: usize,
}

impl Element {
    /// Whether this is element `name` of namespace `uri`.
    pub fn is(&self, uri: &str, name: &str) -> bool {
        self.name == name && &*self.uri == uri
    }

    /// The value of the unnamespaced attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.ns == Ns::None && a.name == name)
            .map(|a| a.value.as_str())
    }
}

/// Parses a whole document into its root element. `bytes` must be UTF-8; a
/// UTF-8 byte order mark is skipped. Returns the text too, for positions.
pub fn parse<'a>(bytes: &'a [u8], limits: &Limits) -> Result<(Element, &'a str), FhirError> {
    if bytes.len() > limits.max_bytes {
        return Err(FhirError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| FhirError::InvalidUtf8 {
        offset: e.valid_up_to(),
    })?;
    let root = parse_str(text, limits.max_depth)?;
    Ok((root, text))
}

/// Parses XML text (already UTF-8) into its root element.
pub fn parse_str(text: &str, max_depth: usize) -> Result<Element, FhirError> {
    check_chars(text)?;
    Builder::new(text, max_depth).run()
}

/// Errors positioned in `text`.
fn syntax(text: &str, offset: usize, reason: &'static str) -> FhirError {
    FhirError::Syntax {
        syntax: Syntax::Xml,
        at: Location::at(text, offset, ""),
        reason,
    }
}

fn forbidden(text: &str, offset: usize, what: &'static str) -> FhirError {
    FhirError::Forbidden {
        at: Location::at(text, offset, ""),
        what,
    }
}

/// XML 1.0 allows no C0 controls but tab, newline and carriage return, and
/// neither U+FFFE nor U+FFFF.
fn check_chars(text: &str) -> Result<(), FhirError> {
    for (i, c) in text.char_indices() {
        if !is_xml_char(c) {
            return Err(syntax(text, i, "character not allowed in xml"));
        }
    }
    Ok(())
}

/// Whether XML 1.0 allows the character.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

struct Open {
    element: Element,
    /// Length of the namespace scope list before this element's declarations.
    scope: usize,
}

struct Builder<'a> {
    text: &'a str,
    max_depth: usize,
    /// In-scope namespace bindings, innermost last: (prefix, uri); prefix "" is the default.
    scopes: Vec<(String, Arc<str>)>,
    /// The empty URI, shared by every element in no namespace.
    no_uri: Arc<str>,
    stack: Vec<Open>,
    root: Option<Element>,
}

impl<'a> Builder<'a> {
    fn new(text: &'a str, max_depth: usize) -> Builder<'a> {
        Builder {
            text,
            max_depth,
            scopes: Vec::new(),
            no_uri: Arc::from(""),
            stack: Vec::new(),
            root: None,
        }
    }

    fn run(mut self) -> Result<Element, FhirError> {
        let mut reader = Reader::from_str(self.text);
        {
            let cfg = reader.config_mut();
            cfg.enable_all_checks(true);
            cfg.allow_dangling_amp = false;
            cfg.allow_unmatched_ends = false;
            cfg.expand_empty_elements = false;
            cfg.trim_text(false);
        }
        let mut first = true;
        loop {
            let pos = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
            let event = match reader.read_event() {
                Ok(e) => e,
                Err(e) => {
                    let at = usize::try_from(reader.error_position()).unwrap_or(pos);
                    return Err(syntax(self.text, at, describe(&e)));
                }
            };
            let was_first = first;
            first = false;
            match event {
                Event::Decl(decl) => {
                    if !was_first {
                        return Err(syntax(self.text, pos, "xml declaration not at the start"));
                    }
                    self.check_decl(&decl, pos)?;
                }
                Event::DocType(_) => return Err(forbidden(self.text, pos, "doctype declaration")),
                Event::PI(_) => return Err(forbidden(self.text, pos, "processing instruction")),
                Event::Comment(_) => {}
                Event::Start(start) => {
                    let open = self.open(&start, pos)?;
                    self.stack.push(open);
                }
                Event::Empty(start) => {
                    let open = self.open(&start, pos)?;
                    self.close(open, pos)?;
                }
                Event::End(_) => {
                    let open = self
                        .stack
                        .pop()
                        .ok_or_else(|| syntax(self.text, pos, "end tag without start tag"))?;
                    self.close(open, pos)?;
                }
                Event::Text(t) => {
                    let content = t
                        .xml10_content()
                        .map_err(|_| syntax(self.text, pos, "text is not utf-8"))?;
                    self.text_node(&content, pos)?;
                }
                Event::CData(c) => {
                    let content = c
                        .xml10_content()
                        .map_err(|_| syntax(self.text, pos, "cdata is not utf-8"))?;
                    if self.stack.is_empty() {
                        return Err(syntax(self.text, pos, "cdata outside the root element"));
                    }
                    self.text_node(&content, pos)?;
                }
                Event::GeneralRef(r) => {
                    let name = r
                        .decode()
                        .map_err(|_| syntax(self.text, pos, "reference is not utf-8"))?;
                    let c =
                        resolve_reference(&name).map_err(|what| self.reference_error(what, pos))?;
                    let mut buf = [0u8; 4];
                    self.text_node(c.encode_utf8(&mut buf), pos)?;
                }
                Event::Eof => break,
            }
        }
        if !self.stack.is_empty() {
            return Err(syntax(
                self.text,
                self.text.len(),
                "unexpected end of input",
            ));
        }
        self.root
            .ok_or_else(|| syntax(self.text, self.text.len(), "no root element"))
    }

    fn reference_error(&self, what: RefError, pos: usize) -> FhirError {
        match what {
            RefError::Entity => forbidden(self.text, pos, "entity reference"),
            RefError::BadChar => syntax(
                self.text,
                pos,
                "character reference to a character not allowed in xml",
            ),
        }
    }

    fn check_decl(
        &self,
        decl: &quick_xml::events::BytesDecl<'_>,
        pos: usize,
    ) -> Result<(), FhirError> {
        match decl.version() {
            Ok(v) if v.as_ref() == b"1.0" => {}
            _ => return Err(syntax(self.text, pos, "xml version must be 1.0")),
        }
        if let Some(enc) = decl.encoding() {
            match enc {
                Ok(e) if e.eq_ignore_ascii_case(b"utf-8") => {}
                _ => return Err(forbidden(self.text, pos, "encoding other than utf-8")),
            }
        }
        Ok(())
    }

    /// Resolves a start tag: namespace declarations, element namespace,
    /// attributes. Checks the depth first.
    fn open(&mut self, start: &BytesStart<'_>, pos: usize) -> Result<Open, FhirError> {
        if self.stack.len() >= self.max_depth {
            return Err(FhirError::TooDeep {
                limit: self.max_depth,
                at: Location::at(self.text, pos, ""),
            });
        }
        if self.root.is_some() && self.stack.is_empty() {
            return Err(syntax(self.text, pos, "more than one root element"));
        }
        let scope = self.scopes.len();
        let mut raw_attrs: Vec<(String, String)> = Vec::new();
        for (count, attr) in start.attributes().with_checks(true).enumerate() {
            // quick-xml's duplicate check is quadratic: stop long before that matters.
            if count >= MAX_ATTRIBUTES {
                return Err(syntax(self.text, pos, "too many attributes on one element"));
            }
            let attr = attr.map_err(|_| syntax(self.text, pos, "malformed attribute"))?;
            let key = std::str::from_utf8(attr.key.as_ref())
                .map_err(|_| syntax(self.text, pos, "attribute name is not utf-8"))?;
            check_qname(key).map_err(|r| syntax(self.text, pos, r))?;
            let raw = std::str::from_utf8(&attr.value)
                .map_err(|_| syntax(self.text, pos, "attribute value is not utf-8"))?;
            let value = unescape_attribute(raw).map_err(|e| match e {
                AttrValueError::Ref(what) => self.reference_error(what, pos),
                AttrValueError::Syntax(r) => syntax(self.text, pos, r),
            })?;
            if key == "xmlns" {
                self.scopes.push((String::new(), Arc::from(value)));
            } else if let Some(prefix) = key.strip_prefix("xmlns:") {
                if value.is_empty() {
                    return Err(syntax(self.text, pos, "empty namespace for a prefix"));
                }
                self.scopes.push((prefix.to_owned(), Arc::from(value)));
            } else {
                raw_attrs.push((key.to_owned(), value));
            }
        }
        let qname = std::str::from_utf8(start.name().as_ref())
            .map_err(|_| syntax(self.text, pos, "element name is not utf-8"))?
            .to_owned();
        check_qname(&qname).map_err(|r| syntax(self.text, pos, r))?;
        let (prefix, local) = split_qname(&qname);
        let uri = self
            .resolve_uri(prefix.unwrap_or(""))
            .ok_or_else(|| syntax(self.text, pos, "undeclared namespace prefix"))?;
        let ns = Ns::of(&uri);
        let mut attrs = Vec::with_capacity(raw_attrs.len());
        for (key, value) in raw_attrs {
            let (prefix, local) = split_qname(&key);
            let ns = match prefix {
                None => Ns::None,
                Some("xml") => Ns::Xml,
                Some(p) => self
                    .resolve(p)
                    .ok_or_else(|| syntax(self.text, pos, "undeclared namespace prefix"))?,
            };
            if attrs.iter().any(|a: &Attr| a.ns == ns && a.name == local) {
                return Err(syntax(self.text, pos, "attribute repeated"));
            }
            attrs.push(Attr {
                ns,
                name: local.to_owned(),
                value,
            });
        }
        Ok(Open {
            element: Element {
                ns,
                uri,
                name: local.to_owned(),
                attrs,
                children: Vec::new(),
                pos,
            },
            scope,
        })
    }

    fn resolve(&self, prefix: &str) -> Option<Ns> {
        if prefix == "xml" {
            return Some(Ns::Xml);
        }
        self.resolve_uri(prefix).map(|uri| Ns::of(&uri))
    }

    /// The namespace URI bound to `prefix` ("" for the default namespace).
    fn resolve_uri(&self, prefix: &str) -> Option<Arc<str>> {
        if prefix == "xml" {
            return Some(Arc::from(XML_NS));
        }
        match self.scopes.iter().rev().find(|(p, _)| p == prefix) {
            Some((_, uri)) => Some(uri.clone()),
            None if prefix.is_empty() => Some(self.no_uri.clone()),
            None => None,
        }
    }

    fn close(&mut self, open: Open, pos: usize) -> Result<(), FhirError> {
        self.scopes.truncate(open.scope);
        match self.stack.last_mut() {
            Some(parent) => parent.element.children.push(Node::Element(open.element)),
            None => {
                if self.root.is_some() {
                    return Err(syntax(self.text, pos, "more than one root element"));
                }
                self.root = Some(open.element);
            }
        }
        Ok(())
    }

    fn text_node(&mut self, content: &str, pos: usize) -> Result<(), FhirError> {
        match self.stack.last_mut() {
            None => {
                if content.chars().all(is_xml_space) {
                    Ok(())
                } else {
                    Err(syntax(self.text, pos, "text outside the root element"))
                }
            }
            Some(open) => {
                if let Some(Node::Text(t)) = open.element.children.last_mut() {
                    t.push_str(content);
                } else {
                    open.element.children.push(Node::Text(content.to_owned()));
                }
                Ok(())
            }
        }
    }
}

/// XML white space.
pub fn is_xml_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

fn describe(e: &quick_xml::Error) -> &'static str {
    use quick_xml::Error as E;
    match e {
        E::Syntax(_) => "not well-formed",
        E::IllFormed(quick_xml::errors::IllFormedError::MismatchedEndTag { .. }) => {
            "end tag does not match the start tag"
        }
        E::IllFormed(quick_xml::errors::IllFormedError::UnmatchedEndTag(_)) => {
            "end tag without start tag"
        }
        E::IllFormed(quick_xml::errors::IllFormedError::DoubleHyphenInComment) => {
            "'--' inside a comment"
        }
        E::IllFormed(_) => "not well-formed",
        E::InvalidAttr(_) => "malformed attribute",
        E::Encoding(_) => "not utf-8",
        E::Escape(_) => "malformed reference",
        E::Namespace(_) => "namespace error",
        E::Io(_) => "read error",
    }
}

/// Why a reference was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefError {
    /// A named entity other than the five predefined ones.
    Entity,
    /// A character reference to a character XML does not allow.
    BadChar,
}

/// Resolves the name between `&` and `;`.
fn resolve_reference(name: &str) -> Result<char, RefError> {
    let c = match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => {
            let Some(num) = name.strip_prefix('#') else {
                return Err(RefError::Entity);
            };
            let code = match num.strip_prefix('x') {
                Some(hex)
                    if !hex.is_empty()
                        && hex.len() <= 6
                        && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    u32::from_str_radix(hex, 16).ok()
                }
                None if !num.is_empty()
                    && num.len() <= 7
                    && num.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    num.parse::<u32>().ok()
                }
                _ => None,
            };
            let c = code.and_then(char::from_u32).ok_or(RefError::BadChar)?;
            if !is_xml_char(c) {
                return Err(RefError::BadChar);
            }
            c
        }
    };
    Ok(c)
}

enum AttrValueError {
    Ref(RefError),
    Syntax(&'static str),
}

/// Attribute value normalisation (XML 1.0 §3.3.3, for CDATA attributes):
/// references resolved, literal tab, newline and carriage return (and CR LF)
/// become one space each; a literal `<` is an error.
fn unescape_attribute(raw: &str) -> Result<String, AttrValueError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find(['&', '<', '\t', '\n', '\r']) {
        out.push_str(rest.get(..i).unwrap_or(""));
        let tail = rest.get(i..).unwrap_or("");
        let mut chars = tail.chars();
        match chars.next() {
            Some('&') => {
                let end = tail
                    .find(';')
                    .ok_or(AttrValueError::Syntax("unterminated reference"))?;
                let name = tail.get(1..end).unwrap_or("");
                out.push(resolve_reference(name).map_err(AttrValueError::Ref)?);
                rest = tail.get(end + 1..).unwrap_or("");
            }
            Some('<') => return Err(AttrValueError::Syntax("'<' in an attribute value")),
            Some('\r') => {
                out.push(' ');
                rest = tail.strip_prefix("\r\n").unwrap_or(chars.as_str());
            }
            _ => {
                out.push(' ');
                rest = chars.as_str();
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A name with at most one colon, each part an XML name.
fn check_qname(qname: &str) -> Result<(), &'static str> {
    let mut parts = qname.split(':');
    let ok = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), None, _) => is_ncname(a),
        (Some(a), Some(b), None) => is_ncname(a) && is_ncname(b),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("bad element or attribute name")
    }
}

fn is_ncname(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars.next().is_some_and(|c| c == '_' || c.is_alphabetic());
    first_ok
        && chars.all(|c| c == '_' || c == '-' || c == '.' || c.is_alphanumeric() || c == '\u{B7}')
}

fn split_qname(qname: &str) -> (Option<&str>, &str) {
    match qname.split_once(':') {
        Some((p, l)) => (Some(p), l),
        None => (None, qname),
    }
}

/// Escapes text content: `&`, `<`, `>`, and carriage return (which XML would
/// otherwise turn into a newline).
pub fn escape_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// Escapes an attribute value so that it survives attribute normalisation:
/// quotes and markup characters, and tab, newline and carriage return as
/// character references.
pub fn escape_attr(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
}

/// Line and column of a byte offset (re-exported for the converters).
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    line_column(text, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(s: &str) -> Element {
        parse(s.as_bytes(), &Limits::default()).unwrap().0
    }

    fn parse_err(s: &str) -> FhirError {
        parse(s.as_bytes(), &Limits::default()).unwrap_err()
    }

    #[test]
    fn namespaces_are_resolved_by_uri() {
        let root = parse_ok(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<f:Patient xmlns:f="http://hl7.org/fhir" xmlns:h="http://www.w3.org/1999/xhtml"><f:text><h:div xml:lang="nl">x</h:div></f:text></f:Patient>"#,
        );
        assert_eq!((root.ns, root.name.as_str()), (Ns::Fhir, "Patient"));
        let Node::Element(text) = &root.children[0] else {
            panic!()
        };
        let Node::Element(div) = &text.children[0] else {
            panic!()
        };
        assert_eq!((div.ns, div.name.as_str()), (Ns::Xhtml, "div"));
        assert_eq!(div.attrs[0].ns, Ns::Xml);
        assert!(
            root.attrs.is_empty(),
            "namespace declarations are not attributes"
        );
    }

    #[test]
    fn other_namespaces_keep_their_uri() {
        let root = parse_ok(
            r#"<s:Envelope xmlns:s="urn:example:soap"><Body xmlns="urn:example:body"><x xmlns=""/></Body></s:Envelope>"#,
        );
        assert_eq!(root.ns, Ns::Other);
        assert!(root.is("urn:example:soap", "Envelope"));
        assert!(!root.is("urn:example:body", "Envelope"));
        let Node::Element(body) = &root.children[0] else {
            panic!()
        };
        assert!(body.is("urn:example:body", "Body"));
        let Node::Element(x) = &body.children[0] else {
            panic!()
        };
        assert_eq!((x.ns, &*x.uri), (Ns::None, ""), "xmlns=\"\" undeclares");
    }

    #[test]
    fn references_are_resolved_and_attributes_normalised() {
        let root = parse_ok(
            "<a xmlns=\"http://hl7.org/fhir\" v=\"x&amp;y&#10;z&#x41;\ttab\r\nnl\" w='&quot;&apos;&lt;&gt;'>a&lt;b&#233;\r\nc<![CDATA[<d>]]></a>",
        );
        assert_eq!(root.attr("v"), Some("x&y\nzA tab nl"));
        assert_eq!(root.attr("w"), Some("\"'<>"));
        assert_eq!(root.children, vec![Node::Text("a<bé\nc<d>".into())]);
    }

    #[test]
    fn hostile_constructs_are_refused() {
        let cases: &[(&str, &str)] = &[
            (
                "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]><Patient xmlns=\"http://hl7.org/fhir\">&lol2;</Patient>",
                "doctype declaration",
            ),
            (
                "<!DOCTYPE Patient SYSTEM \"file:///etc/passwd\"><Patient/>",
                "doctype declaration",
            ),
            (
                "<!DOCTYPE Patient [<!ENTITY xxe SYSTEM \"http://example.org/x\">]><Patient>&xxe;</Patient>",
                "doctype declaration",
            ),
            ("<Patient>&xxe;</Patient>", "entity reference"),
            ("<Patient a=\"&nbsp;\"/>", "entity reference"),
            (
                "<?xml-stylesheet href=\"x.xsl\"?><Patient/>",
                "processing instruction",
            ),
            (
                "<Patient><?php echo 1; ?></Patient>",
                "processing instruction",
            ),
            (
                "<?xml version=\"1.0\" encoding=\"UTF-16\"?><Patient/>",
                "encoding other than utf-8",
            ),
            (
                "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><Patient/>",
                "encoding other than utf-8",
            ),
        ];
        for (doc, what) in cases {
            match parse_err(doc) {
                FhirError::Forbidden { what: w, .. } => assert_eq!(w, *what, "{doc}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
    }

    #[test]
    fn malformed_documents_are_refused() {
        for doc in [
            "",
            "   ",
            "<a>",
            "<a></b>",
            "</a>",
            "<a/><b/>",
            "<a/>text",
            "text<a/>",
            "<a b=\"1\" b=\"2\"/>",
            "<a b/>",
            "<a b=1/>",
            "<a b=\"<\"/>",
            "<a b=\"&#0;\"/>",
            "<a>&#xD800;</a>",
            "<a>&#1;</a>",
            "<a>\u{1}</a>",
            "<a>&amp</a>",
            "<a>& b</a>",
            "<p:a/>",
            "<a p:b=\"1\"/>",
            "<a xmlns:p=\"\"/>",
            "<1a/>",
            "<a:b:c/>",
            "<a><!-- a -- b --></a>",
            "<a/><?xml version=\"1.0\"?>",
            "<?xml version=\"1.1\"?><a/>",
            "<a><![CDATA[x</a>",
            "<a b=\"1\"",
        ] {
            let r = parse(doc.as_bytes(), &Limits::default());
            assert!(r.is_err(), "{doc:?} parsed: {r:?}");
        }
    }

    #[test]
    fn depth_and_size_are_capped() {
        let limits = Limits::default();
        let ok = format!(
            "{}{}",
            "<a>".repeat(limits.max_depth),
            "</a>".repeat(limits.max_depth)
        );
        parse_ok(&ok);
        let deep = format!(
            "{}{}",
            "<a>".repeat(limits.max_depth + 1),
            "</a>".repeat(limits.max_depth + 1)
        );
        assert!(matches!(parse_err(&deep), FhirError::TooDeep { .. }));
        let small = Limits {
            max_bytes: 4,
            ..Limits::default()
        };
        assert_eq!(
            parse(b"<abc/>", &small).unwrap_err(),
            FhirError::TooLarge { limit: 4 }
        );
    }

    #[test]
    fn attribute_count_is_capped() {
        let many: String = (0..MAX_ATTRIBUTES).map(|i| format!(" a{i}=\"\"")).collect();
        parse_ok(&format!("<a{many}/>"));
        let too_many: String = (0..100_000).map(|i| format!(" a{i}=\"\"")).collect();
        assert!(matches!(
            parse_err(&format!("<a{too_many}/>")),
            FhirError::Syntax { .. }
        ));
    }

    #[test]
    fn invalid_utf8_is_refused() {
        assert_eq!(
            parse(b"<a>\xFF</a>", &Limits::default()).unwrap_err(),
            FhirError::InvalidUtf8 { offset: 3 }
        );
        parse(b"\xEF\xBB\xBF<a/>", &Limits::default()).unwrap();
    }

    #[test]
    fn errors_carry_line_and_column() {
        match parse_err("<a>\n  <b>&bogus;</b></a>") {
            FhirError::Forbidden { at, .. } => assert_eq!((at.line, at.column), (2, 6)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escaping_round_trips() {
        let s = "a&b<c>\"d'\te\nf\rg";
        let mut attr = String::new();
        escape_attr(&mut attr, s);
        let mut text = String::new();
        escape_text(&mut text, s);
        let root = parse_ok(&format!("<a v=\"{attr}\">{text}</a>"));
        assert_eq!(root.attr("v"), Some(s));
        assert_eq!(root.children, vec![Node::Text(s.into())]);
    }
}
