//! Access tokens we issue and the grants they carry.
//!
//! A token is 256 random bits, handed out once and kept only as its SHA-256:
//! in memory for lookups and as `<state>/tokens/<hex>.json` (written through
//! the durable-write function) so that a restart does not log partners out.
//! [`TokenStore::check`] is the one function the FHIR side asks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::ids::{self, Bsn, IdScheme, OrgId};
use crate::util::{b64, durable, random};

/// Lifetime of the access tokens we issue (spec §5).
pub const TOKEN_LIFETIME_SECS: i64 = 300;

/// What a token may be used for (DESIGN.md "Token kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// May `POST`/`PUT` a notification Task; reads nothing.
    Notify,
    /// May read the one case bound to its authorization base.
    Pull,
}

impl TokenKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Notify => "notify",
            TokenKind::Pull => "pull",
        }
    }
}

/// The server-side binding of an access token. Built only through
/// [`Grant::notify`] and [`Grant::pull`], so a pull grant always names its
/// case and patient, and a notify grant never names a case.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    /// Configured partner name (the TLS identity and the assertions agreed).
    partner: String,
    /// `sub` of the client assertion.
    client_id: String,
    /// `sub` of the authorization assertion: the requesting organisation.
    requesting_org: OrgId,
    /// `authorizer` (absent for partners that address the system).
    authorizer: Option<OrgId>,
    /// From the `patient` claim; for a pull grant the case's patient.
    patient: Option<Bsn>,
    /// The case a pull grant reads; `None` for a notify grant.
    pull: Option<CaseBinding>,
    issued_at: i64,
    expires_at: i64,
}

/// What a pull grant is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseBinding {
    pub authorization_base: String,
    pub case_id: String,
}

impl Grant {
    /// A notify grant: may `POST`/`PUT` a notification Task, reads nothing.
    pub fn notify(
        partner: &str,
        client_id: &str,
        requesting_org: OrgId,
        authorizer: Option<OrgId>,
        patient: Option<Bsn>,
    ) -> Grant {
        Grant {
            partner: partner.into(),
            client_id: client_id.into(),
            requesting_org,
            authorizer,
            patient,
            pull: None,
            issued_at: 0,
            expires_at: 0,
        }
    }

    /// A pull grant: reads the one case bound to `binding`, of `patient`.
    pub fn pull(
        partner: &str,
        client_id: &str,
        requesting_org: OrgId,
        authorizer: Option<OrgId>,
        binding: CaseBinding,
        patient: Bsn,
    ) -> Grant {
        Grant {
            pull: Some(binding),
            patient: Some(patient),
            ..Grant::notify(partner, client_id, requesting_org, authorizer, None)
        }
    }

    /// The same grant valid from `issued_at` to `expires_at`.
    pub fn valid(mut self, issued_at: i64, expires_at: i64) -> Grant {
        self.issued_at = issued_at;
        self.expires_at = expires_at;
        self
    }

    pub fn kind(&self) -> TokenKind {
        match self.pull {
            Some(_) => TokenKind::Pull,
            None => TokenKind::Notify,
        }
    }

    pub fn partner(&self) -> &str {
        &self.partner
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn requesting_org(&self) -> &OrgId {
        &self.requesting_org
    }

    pub fn authorizer(&self) -> Option<&OrgId> {
        self.authorizer.as_ref()
    }

    pub fn patient(&self) -> Option<&Bsn> {
        self.patient.as_ref()
    }

    /// The case of a pull grant.
    pub fn case(&self) -> Option<&CaseBinding> {
        self.pull.as_ref()
    }

    pub fn authorization_base(&self) -> Option<&str> {
        self.pull.as_ref().map(|b| b.authorization_base.as_str())
    }

    pub fn case_id(&self) -> Option<&str> {
        self.pull.as_ref().map(|b| b.case_id.as_str())
    }

    pub fn issued_at(&self) -> i64 {
        self.issued_at
    }

    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// The requesting organisation as the audit trail and logs write it.
    pub fn requesting_org_claim(&self) -> String {
        ids::org_claim(&self.requesting_org)
    }
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("kind", &self.kind())
            .field("partner", &self.partner)
            .field("case_id", &self.case_id())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A grant as stored in `<state>/tokens/<hash>.json`: plain strings, so the
/// file format does not follow our types around.
#[derive(Serialize, Deserialize)]
struct Record {
    kind: TokenKind,
    partner: String,
    client_id: String,
    requesting_org: String,
    authorizer: Option<String>,
    patient: Option<String>,
    authorization_base: Option<String>,
    case_id: Option<String>,
    issued_at: i64,
    expires_at: i64,
}

impl From<&Grant> for Record {
    fn from(g: &Grant) -> Record {
        Record {
            kind: g.kind(),
            partner: g.partner.clone(),
            client_id: g.client_id.clone(),
            requesting_org: ids::org_claim(&g.requesting_org),
            authorizer: g.authorizer.as_ref().map(ids::org_claim),
            patient: g.patient.as_ref().map(|b| b.as_str().to_string()),
            authorization_base: g.authorization_base().map(String::from),
            case_id: g.case_id().map(String::from),
            issued_at: g.issued_at,
            expires_at: g.expires_at,
        }
    }
}

impl Record {
    /// The grant back, or `None` when a field does not parse (the file is
    /// then treated as unreadable).
    fn into_grant(self) -> Option<Grant> {
        // Stored in claim form (OIDs), which needs no id scheme to read.
        let org = |s: &str| ids::parse_org(s, IdScheme::Ura);
        let requesting_org = org(&self.requesting_org)?;
        let authorizer = match self.authorizer.as_deref() {
            Some(a) => Some(org(a)?),
            None => None,
        };
        let patient = match self.patient.as_deref() {
            Some(p) => Some(Bsn::parse(p)?),
            None => None,
        };
        let grant = match (self.kind, self.authorization_base, self.case_id, patient) {
            (TokenKind::Notify, None, None, patient) => Grant::notify(
                &self.partner,
                &self.client_id,
                requesting_org,
                authorizer,
                patient,
            ),
            (TokenKind::Pull, Some(authorization_base), Some(case_id), Some(patient)) => {
                Grant::pull(
                    &self.partner,
                    &self.client_id,
                    requesting_org,
                    authorizer,
                    CaseBinding {
                        authorization_base,
                        case_id,
                    },
                    patient,
                )
            }
            _ => return None,
        };
        Some(grant.valid(self.issued_at, self.expires_at))
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Unknown,
    Expired,
    /// Presented over another partner's TLS connection.
    WrongPartner,
}

impl TokenRejection {
    pub fn reason(self) -> &'static str {
        match self {
            TokenRejection::Unknown => "unknown token",
            TokenRejection::Expired => "token expired",
            TokenRejection::WrongPartner => "token was issued to another partner",
        }
    }
}

/// An issued token: the secret to hand out once, and its grant.
pub struct Issued {
    pub access_token: String,
    pub grant: Grant,
}

/// Issued tokens, by hash.
#[derive(Debug)]
pub struct TokenStore {
    dir: PathBuf,
    by_hash: RwLock<HashMap<[u8; 32], Grant>>,
}

/// A failure of the token store itself (disk, randomness): a server error.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl TokenStore {
    /// Opens `<state_dir>/tokens`, loading every unexpired grant and removing
    /// expired and unreadable files.
    pub fn open(state_dir: &Path, now: i64) -> Result<TokenStore, StoreError> {
        let dir = state_dir.join("tokens");
        durable::create_dir_all(&dir).map_err(|e| StoreError(e.to_string()))?;
        durable::remove_temp_files(&dir).map_err(|e| StoreError(e.to_string()))?;
        let mut by_hash = HashMap::new();
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| StoreError(format!("{}: cannot read: {e}", dir.display())))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let hash = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(b64::parse_hex)
                .and_then(|h| <[u8; 32]>::try_from(h).ok());
            let grant = std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
                .and_then(Record::into_grant);
            match (hash, grant) {
                (Some(h), Some(g)) if g.expires_at > now => {
                    by_hash.insert(h, g);
                }
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(TokenStore {
            dir,
            by_hash: RwLock::new(by_hash),
        })
    }

    /// Issues a token for `grant` (its `issued_at`/`expires_at` are set here),
    /// stored durably before it is returned.
    pub fn issue(&self, mut grant: Grant, now: i64) -> Result<Issued, StoreError> {
        let secret = random::bytes::<32>().map_err(|e| StoreError(e.to_string()))?;
        let access_token = b64::encode(&secret);
        let hash = hash_token(&access_token);
        grant.issued_at = now;
        grant.expires_at = now + TOKEN_LIFETIME_SECS;
        let json =
            serde_json::to_vec(&Record::from(&grant)).map_err(|e| StoreError(e.to_string()))?;
        durable::write_atomic(&self.path(&hash), &json).map_err(|e| StoreError(e.to_string()))?;
        self.by_hash
            .write()
            .map_err(|_| StoreError("token store lock poisoned".into()))?
            .insert(hash, grant.clone());
        Ok(Issued {
            access_token,
            grant,
        })
    }

    /// The grant of a bearer token presented by `partner` at `now`.
    pub fn check(&self, token: &str, partner: &str, now: i64) -> Result<Grant, TokenRejection> {
        let hash = hash_token(token);
        let map = self.by_hash.read().map_err(|_| TokenRejection::Unknown)?;
        let grant = map.get(&hash).ok_or(TokenRejection::Unknown)?;
        if grant.expires_at <= now {
            return Err(TokenRejection::Expired);
        }
        if grant.partner != partner {
            return Err(TokenRejection::WrongPartner);
        }
        Ok(grant.clone())
    }

    /// Revokes every token bound to `authorization_base` (a cancelled case).
    /// Returns how many were revoked.
    pub fn revoke_base(&self, authorization_base: &str) -> usize {
        let Ok(mut map) = self.by_hash.write() else {
            return 0;
        };
        let doomed: Vec<[u8; 32]> = map
            .iter()
            .filter(|(_, g)| g.authorization_base() == Some(authorization_base))
            .map(|(h, _)| *h)
            .collect();
        for h in &doomed {
            map.remove(h);
            let _ = durable::remove(&self.path(h));
        }
        doomed.len()
    }

    /// Forgets expired tokens (memory and disk). Returns how many.
    pub fn sweep(&self, now: i64) -> usize {
        let Ok(mut map) = self.by_hash.write() else {
            return 0;
        };
        let expired: Vec<[u8; 32]> = map
            .iter()
            .filter(|(_, g)| g.expires_at <= now)
            .map(|(h, _)| *h)
            .collect();
        for h in &expired {
            map.remove(h);
            let _ = std::fs::remove_file(self.path(h));
        }
        expired.len()
    }

    /// Number of live tokens held.
    pub fn len(&self) -> usize {
        self.by_hash.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn path(&self, hash: &[u8; 32]) -> PathBuf {
        self.dir.join(format!("{}.json", b64::hex(hash)))
    }
}

fn hash_token(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PathBuf {
        let d = std::env::temp_dir().join(format!("np-tokens-{}", random::uuid_v4().unwrap()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn grant(kind: TokenKind, base: Option<&str>) -> Grant {
        let org = OrgId::Ura("87654321".into());
        let authorizer = Some(OrgId::Ura("12345678".into()));
        let bsn = Bsn::parse("999999151").unwrap();
        match (kind, base) {
            (TokenKind::Pull, Some(b)) => Grant::pull(
                "hospb",
                "np.hospital-b.example",
                org,
                authorizer,
                CaseBinding {
                    authorization_base: b.into(),
                    case_id: "c-0042".into(),
                },
                bsn,
            ),
            _ => Grant::notify("hospb", "np.hospital-b.example", org, authorizer, Some(bsn)),
        }
    }

    #[test]
    fn issue_check_expire_and_partner_binding() {
        let dir = state();
        let store = TokenStore::open(&dir, 1_000).unwrap();
        let t = store.issue(grant(TokenKind::Notify, None), 1_000).unwrap();
        assert_eq!(t.access_token.len(), 43, "256 bits base64url");
        assert_eq!(t.grant.expires_at(), 1_300);
        assert_eq!(
            store.check(&t.access_token, "hospb", 1_299).unwrap().kind(),
            TokenKind::Notify
        );
        assert_eq!(
            store.check(&t.access_token, "hospb", 1_300),
            Err(TokenRejection::Expired)
        );
        assert_eq!(
            store.check(&t.access_token, "other", 1_100),
            Err(TokenRejection::WrongPartner)
        );
        assert_eq!(
            store.check("not-a-token", "hospb", 1_100),
            Err(TokenRejection::Unknown)
        );
        // Nothing on disk holds the token itself.
        for entry in std::fs::read_dir(dir.join("tokens")).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!String::from_utf8_lossy(&bytes).contains(&t.access_token));
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tokens_survive_a_restart_and_expired_ones_are_dropped() {
        let dir = state();
        let store = TokenStore::open(&dir, 1_000).unwrap();
        let live = store
            .issue(grant(TokenKind::Pull, Some("base-1")), 1_000)
            .unwrap();
        let old = store.issue(grant(TokenKind::Notify, None), 500).unwrap();
        std::fs::write(dir.join("tokens/garbage.json"), b"{").unwrap();
        drop(store);
        let reopened = TokenStore::open(&dir, 1_000).unwrap();
        assert_eq!(reopened.len(), 1);
        let g = reopened.check(&live.access_token, "hospb", 1_001).unwrap();
        assert_eq!(g.authorization_base(), Some("base-1"));
        assert_eq!(g, live.grant, "every field survives the file");
        assert_eq!(
            reopened.check(&old.access_token, "hospb", 1_001),
            Err(TokenRejection::Unknown)
        );
        assert_eq!(std::fs::read_dir(dir.join("tokens")).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn revoking_a_base_ends_its_tokens_at_once() {
        let dir = state();
        let store = TokenStore::open(&dir, 1_000).unwrap();
        let a = store
            .issue(grant(TokenKind::Pull, Some("base-1")), 1_000)
            .unwrap();
        let b = store
            .issue(grant(TokenKind::Pull, Some("base-2")), 1_000)
            .unwrap();
        assert_eq!(store.revoke_base("base-1"), 1);
        assert_eq!(
            store.check(&a.access_token, "hospb", 1_001),
            Err(TokenRejection::Unknown)
        );
        assert!(store.check(&b.access_token, "hospb", 1_001).is_ok());
        assert_eq!(store.sweep(1_300), 1);
        assert!(store.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
