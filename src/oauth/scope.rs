//! SMART scopes of the `client_credentials` grant (Zorgviewer): what a
//! requested `scope` parameter grants, and what a granted scope allows.
//!
//! A scope token is `<context>/<type>.<permission>` (SMART App Launch 1.0,
//! which the Zorgviewer IG keeps for STU3):
//!
//! | part | accepted | granted |
//! |---|---|---|
//! | context | `user`, `system`, `patient` | `user` and `system` alike (the token names the Zorgviewer backend; user context arrives per request); `patient` never: a backend token has no patient context, so those tokens are left out of the grant |
//! | type | an STU3 resource type (`Patient`, `Binary`, …) or `*` | as requested |
//! | permission | `read`, `search`, `*`, `write` | `read` and `*` allow reads and searches (SMART 1.0 `read` is all read access); `search` (Zorgviewer's addition) allows searches only; `write` is left out: we serve no writes |
//!
//! Anything else (another shape, an unknown type or permission, `launch`,
//! `openid`, SMART 2.0 `.rs`) is refused as a whole with RFC 6749
//! `invalid_scope`, as is a request whose grant would be empty. Tokens left
//! out are allowed by RFC 6749 §3.3 ("MAY fully or partially ignore"); the
//! token response's `scope` then says what was granted.

use std::fmt;

use crate::fhir::{FhirVersion, table};

/// Most scope tokens one request may carry.
pub const MAX_SCOPE_TOKENS: usize = 64;
/// Longest scope token, in bytes (the longest one we can grant has 41).
pub const MAX_SCOPE_TOKEN_LEN: usize = 64;

/// What a request does with a resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// `GET <Type>/<id>`.
    Read,
    /// `GET <Type>?…` (and operations that search, such as `$lastn`).
    Search,
}

/// Whose access a scope token describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    User,
    System,
}

/// What a scope token permits on its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Permission {
    Read,
    Search,
    All,
}

/// One granted scope token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    context: Context,
    /// `None`: every type (`*`).
    resource: Option<String>,
    permission: Permission,
}

/// The granted scopes of a token, in the order requested, without
/// duplicates. Built only by [`Scopes::grant`] and [`Scopes::parse_granted`],
/// so never empty.
#[derive(Clone, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

/// Why a `scope` parameter was refused (all RFC 6749 `invalid_scope`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeError {
    /// No `scope` parameter, or only white space.
    Missing,
    /// More than [`MAX_SCOPE_TOKENS`] tokens.
    TooMany(usize),
    /// A token we cannot read; carries the token, cut to [`MAX_SCOPE_TOKEN_LEN`].
    Malformed(String, &'static str),
    /// Every token was well-formed, but none is one we grant.
    NothingGranted,
}

impl fmt::Display for ScopeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopeError::Missing => f.write_str("scope is missing"),
            ScopeError::TooMany(n) => write!(
                f,
                "scope holds {n} tokens, at most {MAX_SCOPE_TOKENS} accepted"
            ),
            ScopeError::Malformed(token, why) => write!(f, "scope {token:?} {why}"),
            ScopeError::NothingGranted => f.write_str(
                "no requested scope can be granted: ask user/ or system/ <Type>.read, .search or .*",
            ),
        }
    }
}

impl std::error::Error for ScopeError {}

impl Scopes {
    /// The grant for a requested `scope` parameter (space-separated tokens).
    pub fn grant(requested: Option<&str>) -> Result<Scopes, ScopeError> {
        let text = requested.unwrap_or_default();
        let tokens: Vec<&str> = text.split(' ').filter(|t| !t.is_empty()).collect();
        if tokens.is_empty() {
            return Err(ScopeError::Missing);
        }
        if tokens.len() > MAX_SCOPE_TOKENS {
            return Err(ScopeError::TooMany(tokens.len()));
        }
        let mut granted: Vec<Scope> = Vec::new();
        for token in tokens {
            if let Some(scope) = parse_token(token)? {
                if !granted.contains(&scope) {
                    granted.push(scope);
                }
            }
        }
        if granted.is_empty() {
            return Err(ScopeError::NothingGranted);
        }
        Ok(Scopes(granted))
    }

    /// A granted scope as stored ([`Scopes`]'s `Display`): every token must
    /// be one we grant.
    pub fn parse_granted(text: &str) -> Option<Scopes> {
        let scopes = Scopes::grant(Some(text)).ok()?;
        (scopes.to_string() == text).then_some(scopes)
    }

    /// True when these scopes allow `interaction` on `resource_type`.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.0.iter().any(|s| {
            let type_ok = s.resource.as_deref().is_none_or(|t| t == resource_type);
            let permission_ok = match (s.permission, interaction) {
                (Permission::Read | Permission::All, _) => true,
                (Permission::Search, Interaction::Search) => true,
                (Permission::Search, Interaction::Read) => false,
            };
            type_ok && permission_ok
        })
    }
}

impl fmt::Display for Scopes {
    /// Space-separated, as the token response's `scope` carries it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let context = match s.context {
                Context::User => "user",
                Context::System => "system",
            };
            let permission = match s.permission {
                Permission::Read => "read",
                Permission::Search => "search",
                Permission::All => "*",
            };
            let resource = s.resource.as_deref().unwrap_or("*");
            write!(f, "{context}/{resource}.{permission}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// One token: `Ok(Some)` granted, `Ok(None)` well-formed but left out.
fn parse_token(token: &str) -> Result<Option<Scope>, ScopeError> {
    let refuse = |why: &'static str| {
        let shown: String = token.chars().take(MAX_SCOPE_TOKEN_LEN).collect();
        Err(ScopeError::Malformed(shown, why))
    };
    if token.len() > MAX_SCOPE_TOKEN_LEN {
        return refuse("is too long");
    }
    // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ).
    if !token
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        return refuse("has characters a scope token cannot hold");
    }
    let Some((context, rest)) = token.split_once('/') else {
        return refuse("is not <context>/<type>.<permission>");
    };
    let Some((resource, permission)) = rest.split_once('.') else {
        return refuse("is not <context>/<type>.<permission>");
    };
    let context = match context {
        "user" => Some(Context::User),
        "system" => Some(Context::System),
        "patient" => None,
        _ => return refuse("has a context other than user, system or patient"),
    };
    let resource = match resource {
        "*" => None,
        t if table::table(FhirVersion::Stu3).resource(t).is_some() => Some(t.to_string()),
        _ => return refuse("names no FHIR STU3 resource type"),
    };
    let permission = match permission {
        "read" => Some(Permission::Read),
        "search" => Some(Permission::Search),
        "*" => Some(Permission::All),
        "write" => None,
        _ => return refuse("has a permission other than read, search, write or *"),
    };
    Ok(match (context, permission) {
        (Some(context), Some(permission)) => Some(Scope {
            context,
            resource,
            permission,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::{Read, Search};

    fn grant(text: &str) -> Result<String, ScopeError> {
        Scopes::grant(Some(text)).map(|s| s.to_string())
    }

    /// The scopes Zorgviewer asks a source for (spec §2).
    const ZORGVIEWER: &str = "user/Patient.read user/Practitioner.read user/Specimen.read \
        user/Binary.read user/Condition.search user/Observation.search \
        user/DocumentReference.search user/Encounter.search user/EpisodeOfCare.search \
        user/Composition.search user/AllergyIntolerance.search user/MedicationStatement.search";

    #[test]
    fn zorgviewer_scopes_are_granted_as_asked() {
        let s = Scopes::grant(Some(ZORGVIEWER)).unwrap();
        let one_line = ZORGVIEWER.split_whitespace().collect::<Vec<_>>().join(" ");
        assert_eq!(s.to_string(), one_line);
        assert!(s.allows("Patient", Read) && s.allows("Patient", Search));
        assert!(s.allows("Binary", Read));
        assert!(s.allows("Observation", Search));
        assert!(!s.allows("Observation", Read), ".search allows no read");
        assert!(!s.allows("Flag", Search), "a type not asked for");
        assert!(!s.allows("patient", Read), "type names are case-sensitive");
        assert_eq!(Scopes::parse_granted(&s.to_string()), Some(s));
    }

    #[test]
    fn wildcards_and_permissions() {
        let all = Scopes::grant(Some("system/*.*")).unwrap();
        for t in ["Patient", "Binary", "Observation"] {
            assert!(all.allows(t, Read) && all.allows(t, Search), "{t}");
        }
        let read = Scopes::grant(Some("user/*.read")).unwrap();
        assert!(read.allows("Condition", Read) && read.allows("Condition", Search));
        let search = Scopes::grant(Some("user/*.search")).unwrap();
        assert!(search.allows("Condition", Search) && !search.allows("Condition", Read));
        let one = Scopes::grant(Some("user/Condition.*")).unwrap();
        assert!(one.allows("Condition", Read) && !one.allows("Encounter", Search));
        assert_eq!(grant("user/*.*").unwrap(), "user/*.*");
    }

    #[test]
    fn what_we_do_not_grant_is_left_out_and_duplicates_once() {
        assert_eq!(
            grant("patient/Observation.read user/Patient.read user/Patient.write").unwrap(),
            "user/Patient.read"
        );
        assert_eq!(
            grant("user/Patient.read  user/Patient.read system/Patient.read").unwrap(),
            "user/Patient.read system/Patient.read"
        );
        assert_eq!(
            grant("patient/*.read"),
            Err(ScopeError::NothingGranted),
            "a backend token has no patient context"
        );
        assert_eq!(grant("user/*.write"), Err(ScopeError::NothingGranted));
    }

    #[test]
    fn malformed_or_unknown_tokens_refuse_the_request() {
        for (text, why) in [
            ("openid", "is not <context>/<type>.<permission>"),
            ("launch/patient", "is not <context>/<type>.<permission>"),
            ("user/Patient", "is not <context>/<type>.<permission>"),
            (
                "admin/Patient.read",
                "has a context other than user, system or patient",
            ),
            (
                "User/Patient.read",
                "has a context other than user, system or patient",
            ),
            ("user/Foo.read", "names no FHIR STU3 resource type"),
            ("user/patient.read", "names no FHIR STU3 resource type"),
            (
                "user/DomainResource.read",
                "names no FHIR STU3 resource type",
            ),
            ("user/.read", "names no FHIR STU3 resource type"),
            ("user/Patient.rs", "has a permission other than"),
            ("user/Patient.", "has a permission other than"),
            ("user/Patient.read.x", "has a permission other than"),
            ("user/Patient.READ", "has a permission other than"),
            (
                "user/Patient.read,user/Binary.read",
                "has a permission other than",
            ),
            (
                "user/Patient.read \"x\"",
                "has characters a scope token cannot hold",
            ),
            (
                "user/Patient.read\\",
                "has characters a scope token cannot hold",
            ),
        ] {
            match grant(text) {
                Err(ScopeError::Malformed(_, w)) => assert!(w.starts_with(why), "{text}: {w}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // One bad token refuses the request, whatever the others.
        assert!(matches!(
            grant("user/Patient.read user/Nope.read"),
            Err(ScopeError::Malformed(..))
        ));
        let long = format!("user/{}.read", "A".repeat(MAX_SCOPE_TOKEN_LEN));
        assert!(
            matches!(grant(&long), Err(ScopeError::Malformed(t, "is too long")) if t.len() == MAX_SCOPE_TOKEN_LEN)
        );
    }

    #[test]
    fn missing_and_too_many() {
        assert_eq!(Scopes::grant(None), Err(ScopeError::Missing));
        assert_eq!(grant(""), Err(ScopeError::Missing));
        assert_eq!(grant("   "), Err(ScopeError::Missing));
        let many = vec!["user/Patient.read"; MAX_SCOPE_TOKENS + 1].join(" ");
        assert_eq!(grant(&many), Err(ScopeError::TooMany(MAX_SCOPE_TOKENS + 1)));
        let enough = vec!["user/Patient.read"; MAX_SCOPE_TOKENS].join(" ");
        assert_eq!(grant(&enough).unwrap(), "user/Patient.read");
    }

    #[test]
    fn stored_scopes_must_be_exactly_a_grant() {
        assert!(Scopes::parse_granted("user/Patient.read").is_some());
        for bad in [
            "",
            "user/Patient.read ",
            "user/Patient.read user/Patient.read",
            "patient/Patient.read",
            "user/Patient.write user/Patient.read",
            "user/Nope.read",
        ] {
            assert_eq!(Scopes::parse_granted(bad), None, "{bad:?}");
        }
    }
}
