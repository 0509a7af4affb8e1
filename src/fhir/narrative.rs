//! Narrative XHTML (`Narrative.div`): the safety check used by both formats,
//! and the canonical serialisation that XML → JSON puts in the `div` string.
//!
//! FHIR (§ Narrative) allows a limited XHTML: no scripts, forms, frames,
//! embedded objects, base/link, event attributes or external stylesheets. We
//! refuse a narrative that has any of these, anything outside the XHTML
//! namespace, or a `javascript:`/`vbscript:` URL in any attribute, so that a
//! viewer that renders it cannot be made to run code.

use super::error::{FhirError, Location};
use super::xml::{self, Element, Node, Ns, XHTML_NS};

/// Elements that are never allowed in a narrative.
const FORBIDDEN_ELEMENTS: &[&str] = &[
    "applet", "audio", "base", "basefont", "body", "button", "canvas", "embed", "form", "frame",
    "frameset", "head", "html", "iframe", "input", "link", "math", "meta", "noscript", "object",
    "option", "param", "script", "select", "source", "style", "svg", "template", "textarea",
    "title", "track", "video",
];

/// Nesting allowed inside one narrative `div` string (on top of its place in
/// the resource). Generous for tables in tables; small enough to bound work.
pub const MAX_NARRATIVE_DEPTH: usize = 64;

/// Checks a narrative given as an XHTML string (the JSON form of
/// `Narrative.div`): well-formed hardened XML, root `div` in the XHTML
/// namespace, and nothing outside the allowed subset.
pub fn check_narrative(xhtml: &str) -> Result<(), FhirError> {
    check_narrative_at(xhtml, "div")
}

/// [`check_narrative`] with errors located at `path`.
pub fn check_narrative_at(xhtml: &str, path: &str) -> Result<(), FhirError> {
    parse_narrative(xhtml, path).map(|_| ())
}

/// Parses and checks a narrative string; returns its tree.
pub fn parse_narrative(xhtml: &str, path: &str) -> Result<Element, FhirError> {
    let root = xml::parse_str(xhtml, MAX_NARRATIVE_DEPTH).map_err(|e| relocate(e, path))?;
    check_tree(&root, path)?;
    Ok(root)
}

/// Checks a narrative tree (from an XML document): root `div` in the XHTML
/// namespace, and nothing outside the allowed subset.
pub fn check_tree(root: &Element, path: &str) -> Result<(), FhirError> {
    if root.ns != Ns::Xhtml || root.name != "div" {
        return Err(unsafe_narrative(path, "the root is not an xhtml div"));
    }
    check_element(root, path)
}

fn check_element(el: &Element, path: &str) -> Result<(), FhirError> {
    if el.ns != Ns::Xhtml {
        return Err(unsafe_narrative(
            path,
            "element outside the xhtml namespace",
        ));
    }
    let name = el.name.to_ascii_lowercase();
    if FORBIDDEN_ELEMENTS.contains(&name.as_str()) {
        return Err(unsafe_narrative(path, forbidden_reason(&name)));
    }
    for a in &el.attrs {
        match a.ns {
            Ns::None => {}
            Ns::Xml if a.name == "lang" || a.name == "space" => {}
            _ => {
                return Err(unsafe_narrative(
                    path,
                    "attribute outside the xhtml vocabulary",
                ));
            }
        }
        let attr = a.name.to_ascii_lowercase();
        if attr.starts_with("on") {
            return Err(unsafe_narrative(path, "event handler attribute"));
        }
        if attr == "srcdoc" || attr == "formaction" || attr == "xlink" {
            return Err(unsafe_narrative(path, "active content attribute"));
        }
        if has_script_url(&a.value) {
            return Err(unsafe_narrative(path, "script url"));
        }
        let folded = fold(&a.value);
        if folded.starts_with("data:") && !(name == "img" && attr == "src") {
            return Err(unsafe_narrative(path, "data url outside an image"));
        }
        if attr == "style"
            && ["expression(", "-moz-binding", "behavior:"]
                .iter()
                .any(|p| folded.contains(p))
        {
            return Err(unsafe_narrative(path, "active style"));
        }
    }
    for child in &el.children {
        if let Node::Element(c) = child {
            check_element(c, path)?;
        }
    }
    Ok(())
}

fn forbidden_reason(name: &str) -> &'static str {
    match name {
        "script" | "noscript" | "template" => "script element",
        "iframe" | "frame" | "frameset" => "frame element",
        "object" | "embed" | "applet" | "param" => "embedded object element",
        "form" | "input" | "button" | "select" | "option" | "textarea" => "form element",
        "style" | "link" | "base" | "meta" => "style, link, base or meta element",
        _ => "element not allowed in a narrative",
    }
}

/// `javascript:` or `vbscript:` anywhere in the value once white space and
/// control characters (which browsers skip inside a scheme) are removed and
/// case is folded; also covers `url(javascript:…)` in a style.
fn has_script_url(value: &str) -> bool {
    let folded = fold(value);
    folded.contains("javascript:") || folded.contains("vbscript:")
}

/// The value without white space and control characters, lower case.
fn fold(value: &str) -> String {
    value
        .chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .flat_map(char::to_lowercase)
        .collect()
}

fn unsafe_narrative(path: &str, reason: &'static str) -> FhirError {
    FhirError::UnsafeNarrative {
        at: Location::path(path),
        reason,
    }
}

/// Gives an error from parsing a narrative string the narrative's path
/// (positions inside the string would only confuse).
fn relocate(e: FhirError, path: &str) -> FhirError {
    match e {
        FhirError::Syntax { syntax, reason, .. } => FhirError::Syntax {
            syntax,
            at: Location::path(path),
            reason,
        },
        FhirError::Forbidden { what, .. } => FhirError::Forbidden {
            at: Location::path(path),
            what,
        },
        FhirError::TooDeep { limit, .. } => FhirError::TooDeep {
            limit,
            at: Location::path(path),
        },
        other => other,
    }
}

/// Elements that HTML knows as empty; only these are written self-closing,
/// so that the XHTML also reads right as HTML (`<td/>` would not).
const VOID_ELEMENTS: &[&str] = &["area", "br", "col", "hr", "img", "wbr"];

/// Writes a checked narrative tree as the XHTML string FHIR JSON carries:
/// the root `div` declares the XHTML namespace, elements are unprefixed,
/// empty void elements (`br`, `img`, …) are self-closing, other empty
/// elements get an end tag. Text escapes `&`, `<`, `>` and `"` (as the FHIR
/// publisher does).
pub fn to_string(root: &Element) -> String {
    let mut out = String::new();
    write_element(&mut out, root, true);
    out
}

/// Writes a checked narrative tree into an XML document being built.
pub fn write_into(out: &mut String, root: &Element) {
    write_element(out, root, true);
}

fn write_element(out: &mut String, el: &Element, root: bool) {
    out.push('<');
    out.push_str(&el.name);
    if root {
        out.push_str(" xmlns=\"");
        out.push_str(XHTML_NS);
        out.push('"');
    }
    for a in &el.attrs {
        out.push(' ');
        if a.ns == Ns::Xml {
            out.push_str("xml:");
        }
        out.push_str(&a.name);
        out.push_str("=\"");
        xml::escape_attr(out, &a.value);
        out.push('"');
    }
    if el.children.is_empty() && VOID_ELEMENTS.contains(&el.name.as_str()) {
        out.push_str("/>");
        return;
    }
    out.push('>');
    for child in &el.children {
        match child {
            Node::Element(c) => write_element(out, c, false),
            Node::Text(t) => escape_narrative_text(out, t),
        }
    }
    out.push_str("</");
    out.push_str(&el.name);
    out.push('>');
}

fn escape_narrative_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("&quot;"),
            c => {
                let mut buf = [0u8; 4];
                xml::escape_text(out, c.encode_utf8(&mut buf));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: &str = "<div xmlns=\"http://www.w3.org/1999/xhtml\">";

    fn div(inner: &str) -> String {
        format!("{OPEN}{inner}</div>")
    }

    #[test]
    fn ordinary_narratives_pass() {
        for inner in [
            "plain",
            "<p>a <b>b</b> <i>c</i><br/></p>",
            "<table class=\"grid\"><tr><td colspan=\"2\">x</td></tr></table>",
            "<a href=\"http://example.org/x\">link</a> <img src=\"#p1\" alt=\"\"/>",
            "<img src=\"data:image/png;base64,iVBORw0KGgo=\" alt=\"x\"/>",
            "<span style=\"color: red\" xml:lang=\"nl\">rood</span>",
            "<ul><li>one</li><li>two &amp; three</li></ul>",
        ] {
            check_narrative(&div(inner)).unwrap_or_else(|e| panic!("{inner}: {e}"));
        }
    }

    #[test]
    fn active_content_is_refused() {
        for (inner, reason) in [
            ("<script>alert(1)</script>", "script element"),
            ("<SCRIPT>alert(1)</SCRIPT>", "script element"),
            ("<iframe src=\"http://x\"/>", "frame element"),
            ("<object data=\"x\"/>", "embedded object element"),
            ("<embed src=\"x\"/>", "embedded object element"),
            ("<form action=\"x\"><input/></form>", "form element"),
            ("<p onclick=\"x()\">a</p>", "event handler attribute"),
            (
                "<img src=\"x\" OnError=\"x()\"/>",
                "event handler attribute",
            ),
            ("<a href=\"javascript:alert(1)\">a</a>", "script url"),
            ("<a href=\" JaVa&#9;Script:alert(1)\">a</a>", "script url"),
            ("<a href=\"vbscript:x\">a</a>", "script url"),
            (
                "<p style=\"background:url(javascript:x)\">a</p>",
                "script url",
            ),
            ("<style>p{}</style>", "style, link, base or meta element"),
            (
                "<link rel=\"stylesheet\" href=\"x\"/>",
                "style, link, base or meta element",
            ),
            (
                "<svg xmlns=\"http://www.w3.org/2000/svg\"><script/></svg>",
                "element outside the xhtml namespace",
            ),
            (
                "<p xmlns:x=\"http://www.w3.org/1999/xlink\" x:href=\"y\">a</p>",
                "attribute outside the xhtml vocabulary",
            ),
        ] {
            match check_narrative(&div(inner)) {
                Err(FhirError::UnsafeNarrative { reason: r, .. }) => {
                    assert_eq!(r, reason, "{inner}")
                }
                other => panic!("{inner}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_root_must_be_an_xhtml_div() {
        for doc in [
            "<div>no namespace</div>",
            "<p xmlns=\"http://www.w3.org/1999/xhtml\">x</p>",
            "<div xmlns=\"http://hl7.org/fhir\">x</div>",
        ] {
            assert!(
                matches!(check_narrative(doc), Err(FhirError::UnsafeNarrative { .. })),
                "{doc}"
            );
        }
        for doc in ["", "plain text", "<div", "<!DOCTYPE div><div/>"] {
            assert!(check_narrative(doc).is_err(), "{doc}");
        }
    }

    #[test]
    fn serialisation_is_canonical_and_reparses() {
        let src = "<x:div xmlns:x=\"http://www.w3.org/1999/xhtml\" xml:lang=\"nl\"><x:p class=\"a&amp;b\">1 &lt; 2 &#233;<x:br></x:br></x:p></x:div>";
        let tree = parse_narrative(src, "div").unwrap();
        let s = to_string(&tree);
        assert_eq!(
            s,
            "<div xmlns=\"http://www.w3.org/1999/xhtml\" xml:lang=\"nl\"><p class=\"a&amp;b\">1 &lt; 2 é<br/></p></div>"
        );
        let mut a = tree;
        let mut b = parse_narrative(&s, "div").unwrap();
        zero_positions(&mut a);
        zero_positions(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn empty_elements_are_written_for_html_readers_too() {
        let tree =
            parse_narrative(&div("<p/><td></td><br></br><img src=\"a\"/>\"q\""), "div").unwrap();
        assert_eq!(
            to_string(&tree),
            div("<p></p><td></td><br/><img src=\"a\"/>&quot;q&quot;")
        );
    }

    fn zero_positions(e: &mut Element) {
        e.pos = 0;
        for c in &mut e.children {
            if let Node::Element(c) = c {
                zero_positions(c);
            }
        }
    }
}
