//! Access tokens we issue and the grants they carry.
//!
//! A token is 256 random bits, handed out once and kept only as its SHA-256:
//! in memory for lookups, and in the journal `<state>/tokens/journal` so that
//! a restart does not log partners out. Issuing appends `+<hash> <grant>`,
//! revoking appends `-<hash>`; [`TokenStore::issue`] returns the token only
//! once its line is on disk, concurrent requests sharing one `fdatasync`
//! ([`Journal`]). Opening replays the journal, drops expired grants and
//! writes the live ones to a fresh journal; the minute sweep rewrites it
//! once most of it is dead. Token files of the one-file-per-token layout
//! (`<hex>.json`) are read into the journal on opening and removed.
//! [`TokenStore::check`] is the one function the FHIR side asks.
//!
//! Tokens are certificate-bound (RFC 8705 §3): a grant remembers the SHA-256
//! of the TLS client certificate it was issued over ([`Grant::bound_to`]),
//! and [`TokenStore::check`] refuses it over any other certificate, even one
//! of the same partner. A grant without that binding is never stored and a
//! token file without it is not loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};

use crate::ids::{self, Bsn, IdScheme, Oid, OrgId};
use crate::oauth::scope::{Interaction, Scopes};
use crate::ops::logging::Q;
use crate::util::journal::{self, Journal};
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
    /// A Zorgviewer backend token (`client_credentials`): may read what its
    /// scopes allow of the records published to that partner.
    Zorgviewer,
}

impl TokenKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Notify => "notify",
            TokenKind::Pull => "pull",
            TokenKind::Zorgviewer => "zorgviewer",
        }
    }
}

/// The server-side binding of an access token. Built only through
/// [`Grant::notify`], [`Grant::pull`] and [`Grant::zorgviewer`], so a pull
/// grant always names its case and patient, a notify grant never names a
/// case, and a Zorgviewer grant always has its scopes and organisation.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    /// Configured partner name (the TLS identity and the assertions agreed).
    partner: String,
    /// `sub` of the client assertion.
    client_id: String,
    access: Access,
    /// SHA-256 of the DER of the TLS client certificate the token was issued over.
    cert_sha256: Option<[u8; 32]>,
    issued_at: i64,
    expires_at: i64,
}

/// What the two families of grant carry.
#[derive(Clone, PartialEq, Eq)]
enum Access {
    /// TA Notified Pull: a notify grant (`pull` `None`) or a pull grant.
    Twiin {
        /// `sub` of the authorization assertion: the requesting organisation.
        requesting_org: OrgId,
        /// `authorizer` (absent for partners that address the system).
        authorizer: Option<OrgId>,
        /// From the `patient` claim; for a pull grant the case's patient.
        patient: Option<Bsn>,
        /// The case a pull grant reads; `None` for a notify grant.
        pull: Option<CaseBinding>,
    },
    Zorgviewer(ZorgviewerAccess),
}

/// What a pull grant is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseBinding {
    pub authorization_base: String,
    pub case_id: String,
}

/// What a Zorgviewer token may read, and for whom the Zorgviewer asked: the
/// granted scopes and the IHE IUA claims of its client assertion.
#[derive(Clone, PartialEq, Eq)]
pub struct ZorgviewerAccess {
    scopes: Scopes,
    subject_organization_id: Oid,
    subject_organization: Option<String>,
    subject_name: Option<String>,
    subject_role: Vec<String>,
}

impl ZorgviewerAccess {
    /// The access of a checked client assertion: its granted `scopes` and
    /// IUA claims (`subject_role` as role codes).
    pub fn new(
        scopes: Scopes,
        subject_organization_id: Oid,
        subject_organization: Option<String>,
        subject_name: Option<String>,
        subject_role: Vec<String>,
    ) -> ZorgviewerAccess {
        ZorgviewerAccess {
            scopes,
            subject_organization_id,
            subject_organization,
            subject_name,
            subject_role,
        }
    }

    /// True when the granted scopes allow `interaction` on `resource_type`.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.scopes.allows(resource_type, interaction)
    }

    pub fn scopes(&self) -> &Scopes {
        &self.scopes
    }

    /// `subject_organization_id`: the organisation the Zorgviewer user works for.
    pub fn subject_organization_id(&self) -> &Oid {
        &self.subject_organization_id
    }

    /// `subject_organization`: that organisation's name, when given.
    pub fn subject_organization(&self) -> Option<&str> {
        self.subject_organization.as_deref()
    }

    /// `subject_name`, when given.
    pub fn subject_name(&self) -> Option<&str> {
        self.subject_name.as_deref()
    }

    /// `subject_role` as role codes (SNOMED CT in practice); empty when not given.
    pub fn subject_role(&self) -> &[String] {
        &self.subject_role
    }
}

impl std::fmt::Debug for ZorgviewerAccess {
    /// Names no person: the organisation and scopes only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZorgviewerAccess")
            .field("scopes", &self.scopes)
            .field("subject_organization_id", &self.subject_organization_id)
            .finish_non_exhaustive()
    }
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
            access: Access::Twiin {
                requesting_org,
                authorizer,
                patient,
                pull: None,
            },
            cert_sha256: None,
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
            partner: partner.into(),
            client_id: client_id.into(),
            access: Access::Twiin {
                requesting_org,
                authorizer,
                patient: Some(patient),
                pull: Some(binding),
            },
            cert_sha256: None,
            issued_at: 0,
            expires_at: 0,
        }
    }

    /// A Zorgviewer grant: reads what `access` allows.
    pub fn zorgviewer(partner: &str, client_id: &str, access: ZorgviewerAccess) -> Grant {
        Grant {
            partner: partner.into(),
            client_id: client_id.into(),
            access: Access::Zorgviewer(access),
            cert_sha256: None,
            issued_at: 0,
            expires_at: 0,
        }
    }

    /// The same grant, usable only over the TLS client certificate whose DER
    /// has SHA-256 `cert_sha256` (the one the token request came over).
    pub fn bound_to(mut self, cert_sha256: [u8; 32]) -> Grant {
        self.cert_sha256 = Some(cert_sha256);
        self
    }

    /// The SHA-256 of the client certificate the grant is bound to.
    pub fn cert_sha256(&self) -> Option<&[u8; 32]> {
        self.cert_sha256.as_ref()
    }

    /// The same grant valid from `issued_at` to `expires_at`.
    pub fn valid(mut self, issued_at: i64, expires_at: i64) -> Grant {
        self.issued_at = issued_at;
        self.expires_at = expires_at;
        self
    }

    pub fn kind(&self) -> TokenKind {
        match &self.access {
            Access::Twiin { pull: Some(_), .. } => TokenKind::Pull,
            Access::Twiin { pull: None, .. } => TokenKind::Notify,
            Access::Zorgviewer(_) => TokenKind::Zorgviewer,
        }
    }

    pub fn partner(&self) -> &str {
        &self.partner
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The requesting organisation of a notify or pull grant (`sub` of the
    /// authorization assertion); `None` for a Zorgviewer grant, whose
    /// organisation is an OID ([`ZorgviewerAccess::subject_organization_id`]).
    pub fn requesting_org(&self) -> Option<&OrgId> {
        match &self.access {
            Access::Twiin { requesting_org, .. } => Some(requesting_org),
            Access::Zorgviewer(_) => None,
        }
    }

    pub fn authorizer(&self) -> Option<&OrgId> {
        match &self.access {
            Access::Twiin { authorizer, .. } => authorizer.as_ref(),
            Access::Zorgviewer(_) => None,
        }
    }

    pub fn patient(&self) -> Option<&Bsn> {
        match &self.access {
            Access::Twiin { patient, .. } => patient.as_ref(),
            Access::Zorgviewer(_) => None,
        }
    }

    /// The case of a pull grant.
    pub fn case(&self) -> Option<&CaseBinding> {
        match &self.access {
            Access::Twiin { pull, .. } => pull.as_ref(),
            Access::Zorgviewer(_) => None,
        }
    }

    /// What a Zorgviewer grant may read.
    pub fn zorgviewer_access(&self) -> Option<&ZorgviewerAccess> {
        match &self.access {
            Access::Zorgviewer(z) => Some(z),
            Access::Twiin { .. } => None,
        }
    }

    pub fn authorization_base(&self) -> Option<&str> {
        self.case().map(|b| b.authorization_base.as_str())
    }

    pub fn case_id(&self) -> Option<&str> {
        self.case().map(|b| b.case_id.as_str())
    }

    pub fn issued_at(&self) -> i64 {
        self.issued_at
    }

    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }

    /// The requesting organisation as the audit trail and logs write it:
    /// the claim form of a URA/AGB, or `urn:oid:<subject_organization_id>`.
    pub fn requesting_org_claim(&self) -> String {
        match &self.access {
            Access::Twiin { requesting_org, .. } => ids::org_claim(requesting_org),
            Access::Zorgviewer(z) => z.subject_organization_id.urn(),
        }
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

/// A grant as stored in the journal: plain strings, so the
/// file format does not follow our types around. A Zorgviewer grant writes
/// `urn:oid:<subject_organization_id>` as `requesting_org` and its other
/// fields under `zorgviewer`; files without that member read as before.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zorgviewer: Option<ZorgviewerRecord>,
    /// Hex SHA-256 of the client certificate; a file without it grants nothing.
    #[serde(default)]
    cert_sha256: Option<String>,
    issued_at: i64,
    expires_at: i64,
}

/// The fields only a Zorgviewer grant has, as stored.
#[derive(Serialize, Deserialize)]
struct ZorgviewerRecord {
    /// Space-separated, as granted.
    scope: String,
    subject_organization: Option<String>,
    subject_name: Option<String>,
    #[serde(default)]
    subject_role: Vec<String>,
}

impl From<&Grant> for Record {
    fn from(g: &Grant) -> Record {
        Record {
            kind: g.kind(),
            partner: g.partner.clone(),
            client_id: g.client_id.clone(),
            requesting_org: g.requesting_org_claim(),
            authorizer: g.authorizer().map(ids::org_claim),
            patient: g.patient().map(|b| b.as_str().to_string()),
            authorization_base: g.authorization_base().map(String::from),
            case_id: g.case_id().map(String::from),
            zorgviewer: g.zorgviewer_access().map(|z| ZorgviewerRecord {
                scope: z.scopes.to_string(),
                subject_organization: z.subject_organization.clone(),
                subject_name: z.subject_name.clone(),
                subject_role: z.subject_role.clone(),
            }),
            cert_sha256: g.cert_sha256.as_ref().map(|h| b64::hex(h)),
            issued_at: g.issued_at,
            expires_at: g.expires_at,
        }
    }
}

impl Record {
    /// The grant back, or `None` when a field does not parse or the
    /// certificate binding is missing (the file is then treated as unreadable).
    fn into_grant(self) -> Option<Grant> {
        let cert = self
            .cert_sha256
            .as_deref()
            .and_then(b64::parse_hex)
            .and_then(|h| <[u8; 32]>::try_from(h).ok())?;
        let grant = if self.kind == TokenKind::Zorgviewer {
            self.into_zorgviewer_grant()
        } else {
            self.into_twiin_grant()
        };
        grant.map(|g| g.bound_to(cert))
    }

    fn into_twiin_grant(self) -> Option<Grant> {
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
        let grant = match (
            self.kind,
            self.authorization_base,
            self.case_id,
            patient,
            self.zorgviewer,
        ) {
            (TokenKind::Notify, None, None, patient, None) => Grant::notify(
                &self.partner,
                &self.client_id,
                requesting_org,
                authorizer,
                patient,
            ),
            (TokenKind::Pull, Some(authorization_base), Some(case_id), Some(patient), None) => {
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

    fn into_zorgviewer_grant(self) -> Option<Grant> {
        let twiin_fields = self.authorizer.is_some()
            || self.patient.is_some()
            || self.authorization_base.is_some()
            || self.case_id.is_some();
        let z = self.zorgviewer?;
        if twiin_fields || !self.requesting_org.starts_with("urn:oid:") {
            return None;
        }
        let access = ZorgviewerAccess::new(
            Scopes::parse_granted(&z.scope)?,
            Oid::parse(&self.requesting_org)?,
            z.subject_organization,
            z.subject_name,
            z.subject_role,
        );
        Some(
            Grant::zorgviewer(&self.partner, &self.client_id, access)
                .valid(self.issued_at, self.expires_at),
        )
    }
}

/// Why a bearer token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Unknown,
    Expired,
    /// Presented over another partner's TLS connection.
    WrongPartner,
    /// Presented over a TLS client certificate other than the one it was
    /// issued over (the same partner's other certificate included).
    WrongCertificate,
}

impl TokenRejection {
    pub fn reason(self) -> &'static str {
        match self {
            TokenRejection::Unknown => "unknown token",
            TokenRejection::Expired => "token expired",
            TokenRejection::WrongPartner => "token was issued to another partner",
            TokenRejection::WrongCertificate => {
                "token was issued over another TLS client certificate"
            }
        }
    }
}

/// An issued token: the secret to hand out once, and its grant.
pub struct Issued {
    pub access_token: String,
    pub grant: Grant,
}

/// A token whose journal line is queued ([`TokenStore::submit`]).
#[must_use = "a token is stored, and may be handed out, only once waited for"]
pub struct PendingToken<'a> {
    store: &'a TokenStore,
    hash: [u8; 32],
    stored: journal::Pending<'a>,
    issued: Issued,
}

impl PendingToken<'_> {
    /// The token, once its line is on disk; on a failed flush the token is
    /// forgotten (never handed out, refused if presented).
    pub fn wait(self) -> Result<Issued, StoreError> {
        match self.stored.wait() {
            Ok(()) => Ok(self.issued),
            Err(e) => {
                self.store.forget(&self.hash);
                Err(e.into())
            }
        }
    }

    /// The grant the token will carry.
    pub fn grant(&self) -> &Grant {
        &self.issued.grant
    }
}

/// Issued tokens, by hash.
#[derive(Debug)]
pub struct TokenStore {
    by_hash: RwLock<ByHash>,
    journal: Journal,
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

impl From<durable::DurableError> for StoreError {
    fn from(e: durable::DurableError) -> StoreError {
        StoreError(e.to_string())
    }
}

impl TokenStore {
    /// Opens `<state_dir>/tokens`: replays the journal and reads any token
    /// files, keeps the unexpired grants, writes them to a fresh journal and
    /// removes the files.
    pub fn open(state_dir: &Path, now: i64) -> Result<TokenStore, StoreError> {
        let dir = state_dir.join("tokens");
        durable::create_dir_all(&dir)?;
        durable::remove_temp_files(&dir)?;
        let path = dir.join("journal");
        let (files, mut by_hash, skipped) = load(&dir)?;
        by_hash.retain(|_, g| g.expires_at > now);
        let records = by_hash
            .iter()
            .map(|(h, g)| issued_line(h, g))
            .collect::<Result<Vec<_>, _>>()?;
        let journal = Journal::create(&path, &records)?;
        for file in &files {
            std::fs::remove_file(file)
                .map_err(|e| StoreError(format!("{}: cannot remove: {e}", file.display())))?;
        }
        if !files.is_empty() {
            durable::sync_dir(&dir)?;
        }
        if skipped > 0 || !files.is_empty() {
            log::info!(
                "event=journal.recovered path={} live={} skipped={skipped} migrated={}",
                Q(&path.display().to_string()),
                by_hash.len(),
                files.len()
            );
        }
        Ok(TokenStore {
            by_hash: RwLock::new(by_hash),
            journal,
        })
    }

    /// The grants held in `<state_dir>/tokens`, expired ones included, read
    /// without opening the store (for checks beside a stopped daemon).
    pub fn grants_at(state_dir: &Path) -> Result<Vec<Grant>, StoreError> {
        let (_, by_hash, _) = load(&state_dir.join("tokens"))?;
        Ok(by_hash.into_values().collect())
    }

    /// Issues a token for `grant` (its `issued_at`/`expires_at` are set here),
    /// stored durably before it is returned. The grant must be bound to a
    /// client certificate ([`Grant::bound_to`]).
    pub fn issue(&self, grant: Grant, now: i64) -> Result<Issued, StoreError> {
        self.submit(grant, now)?.wait()
    }

    /// [`Self::issue`] without waiting for the disk: the token's line is
    /// queued and [`PendingToken::wait`] hands the token out once it is on
    /// disk. Dropped unwaited, the token is never handed out.
    pub fn submit(&self, mut grant: Grant, now: i64) -> Result<PendingToken<'_>, StoreError> {
        if grant.cert_sha256.is_none() {
            return Err(StoreError(
                "a token must be bound to a TLS client certificate".into(),
            ));
        }
        let secret = random::bytes::<32>().map_err(|e| StoreError(e.to_string()))?;
        let access_token = b64::encode(&secret);
        let hash = hash_token(&access_token);
        grant.issued_at = now;
        grant.expires_at = now + TOKEN_LIFETIME_SECS;
        let line = issued_line(&hash, &grant)?;
        // In memory before the append, so a journal rewrite running meanwhile
        // keeps it; nobody holds the token before `wait` returns it.
        self.write()?.insert(hash, grant.clone());
        match self.journal.submit(&[&line]) {
            Ok(stored) => Ok(PendingToken {
                store: self,
                hash,
                stored,
                issued: Issued {
                    access_token,
                    grant,
                },
            }),
            Err(e) => {
                self.forget(&hash);
                Err(e.into())
            }
        }
    }

    fn forget(&self, hash: &[u8; 32]) {
        if let Ok(mut map) = self.write() {
            map.remove(hash);
        }
    }

    /// The grant of a bearer token presented by `partner` over the TLS
    /// client certificate whose DER has SHA-256 `cert_sha256`, at `now`.
    pub fn check(
        &self,
        token: &str,
        partner: &str,
        cert_sha256: &[u8; 32],
        now: i64,
    ) -> Result<Grant, TokenRejection> {
        let hash = hash_token(token);
        let map = self.by_hash.read().map_err(|_| TokenRejection::Unknown)?;
        let grant = map.get(&hash).ok_or(TokenRejection::Unknown)?;
        if grant.expires_at <= now {
            return Err(TokenRejection::Expired);
        }
        if grant.partner != partner {
            return Err(TokenRejection::WrongPartner);
        }
        if grant.cert_sha256.as_ref() != Some(cert_sha256) {
            return Err(TokenRejection::WrongCertificate);
        }
        Ok(grant.clone())
    }

    /// Revokes every token bound to `authorization_base` (a cancelled case):
    /// refused at once, and the revocation appended to the journal. Returns
    /// how many were revoked.
    pub fn revoke_base(&self, authorization_base: &str) -> usize {
        let doomed: Vec<[u8; 32]> = {
            let Ok(mut map) = self.write() else {
                return 0;
            };
            let doomed: Vec<[u8; 32]> = map
                .iter()
                .filter(|(_, g)| g.authorization_base() == Some(authorization_base))
                .map(|(h, _)| *h)
                .collect();
            for h in &doomed {
                map.remove(h);
            }
            doomed
        };
        if !doomed.is_empty() {
            let lines: Vec<String> = doomed.iter().map(revoked_line).collect();
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            if let Err(e) = self.journal.append(&lines) {
                // Refused in memory now; after a restart the tokens would be
                // back until they expire (at most TOKEN_LIFETIME_SECS).
                log::error!("event=token.revoke_failed error={}", Q(&e.to_string()));
            }
        }
        doomed.len()
    }

    /// Forgets expired tokens, and rewrites the journal once most of it is
    /// dead. Returns how many were forgotten.
    pub fn sweep(&self, now: i64) -> usize {
        let (expired, live) = {
            let Ok(mut map) = self.write() else {
                return 0;
            };
            let before = map.len();
            map.retain(|_, g| g.expires_at > now);
            (before - map.len(), map.len())
        };
        if journal::should_compact(self.journal.lines(), live) {
            if let Err(e) = self.compact() {
                log::error!("event=token.compact_failed error={}", Q(&e.to_string()));
            }
        }
        expired
    }

    /// Rewrites the journal with the tokens held now.
    pub fn compact(&self) -> Result<(), StoreError> {
        let mut framing = Ok(());
        self.journal.rewrite(|| {
            let Ok(map) = self.by_hash.read() else {
                framing = Err(StoreError("token store lock poisoned".into()));
                return Vec::new();
            };
            map.iter()
                .filter_map(|(h, g)| match issued_line(h, g) {
                    Ok(line) => Some(line),
                    Err(e) => {
                        framing = Err(e);
                        None
                    }
                })
                .collect()
        })?;
        framing
    }

    /// Number of live tokens held.
    pub fn len(&self) -> usize {
        self.by_hash.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True when no token is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the next `n` journal flushes fail after their write (tests).
    #[cfg(test)]
    pub(crate) fn insecure_test_fail_syncs(&self, n: usize) {
        self.journal.insecure_test_fail_syncs(n);
    }

    fn write(
        &self,
    ) -> Result<std::sync::RwLockWriteGuard<'_, HashMap<[u8; 32], Grant>>, StoreError> {
        self.by_hash
            .write()
            .map_err(|_| StoreError("token store lock poisoned".into()))
    }
}

/// The token files of `dir`, and the grants of the files and the journal
/// with the journal's revocations applied, and how many journal lines were
/// skipped (torn or unreadable).
fn load(dir: &Path) -> Result<(Vec<PathBuf>, ByHash, usize), StoreError> {
    let (files, mut by_hash) = token_files(dir)?;
    let contents = Journal::read(&dir.join("journal"))?;
    let mut skipped = contents.skipped;
    for line in &contents.records {
        match parse_line(line) {
            Some(Change::Issued(h, g)) => {
                by_hash.insert(h, *g);
            }
            Some(Change::Revoked(h)) => {
                by_hash.remove(&h);
            }
            None => skipped += 1,
        }
    }
    Ok((files, by_hash, skipped))
}

/// One line of the token journal (read once at start: the box costs nothing).
enum Change {
    Issued([u8; 32], Box<Grant>),
    Revoked([u8; 32]),
}

/// `+<hash> <grant as JSON>`.
fn issued_line(hash: &[u8; 32], grant: &Grant) -> Result<String, StoreError> {
    let json =
        serde_json::to_string(&Record::from(grant)).map_err(|e| StoreError(e.to_string()))?;
    Ok(format!("+{} {json}", b64::hex(hash)))
}

/// `-<hash>`.
fn revoked_line(hash: &[u8; 32]) -> String {
    format!("-{}", b64::hex(hash))
}

fn parse_line(line: &str) -> Option<Change> {
    if let Some(rest) = line.strip_prefix('+') {
        let (hash, json) = rest.split_once(' ')?;
        let grant = serde_json::from_str::<Record>(json).ok()?.into_grant()?;
        return Some(Change::Issued(parse_hash(hash)?, Box::new(grant)));
    }
    Some(Change::Revoked(parse_hash(line.strip_prefix('-')?)?))
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    b64::parse_hex(hex).and_then(|h| <[u8; 32]>::try_from(h).ok())
}

/// Grants by the hash of their token.
type ByHash = HashMap<[u8; 32], Grant>;

/// The token files of the one-file-per-token layout (`<hex>.json`): every
/// such file, and the grants of those that read back.
fn token_files(dir: &Path) -> Result<(Vec<PathBuf>, ByHash), StoreError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError(format!("{}: cannot read: {e}", dir.display())))?;
    let mut files = Vec::new();
    let mut grants = HashMap::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let hash = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(parse_hash);
        let grant = std::fs::read(&path)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Record>(&bytes).ok())
            .and_then(Record::into_grant);
        if let (Some(h), Some(g)) = (hash, grant) {
            grants.insert(h, g);
        }
        files.push(path);
    }
    Ok((files, grants))
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
    use std::sync::Mutex;

    fn state() -> PathBuf {
        let d = std::env::temp_dir().join(format!("np-tokens-{}", random::uuid_v4().unwrap()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The client certificate the test tokens are issued over.
    const CERT: [u8; 32] = [0xc1; 32];

    fn grant(kind: TokenKind, base: Option<&str>) -> Grant {
        unbound(kind, base).bound_to(CERT)
    }

    fn unbound(kind: TokenKind, base: Option<&str>) -> Grant {
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
            store
                .check(&t.access_token, "hospb", &CERT, 1_299)
                .unwrap()
                .kind(),
            TokenKind::Notify
        );
        assert_eq!(
            store.check(&t.access_token, "hospb", &CERT, 1_300),
            Err(TokenRejection::Expired)
        );
        assert_eq!(
            store.check(&t.access_token, "other", &CERT, 1_100),
            Err(TokenRejection::WrongPartner)
        );
        // The same partner over another certificate.
        assert_eq!(
            store.check(&t.access_token, "hospb", &[0xc2; 32], 1_100),
            Err(TokenRejection::WrongCertificate)
        );
        assert_eq!(t.grant.cert_sha256(), Some(&CERT));
        assert_eq!(
            store.check("not-a-token", "hospb", &CERT, 1_100),
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
        let g = reopened
            .check(&live.access_token, "hospb", &CERT, 1_001)
            .unwrap();
        assert_eq!(g.authorization_base(), Some("base-1"));
        assert_eq!(g, live.grant, "every field survives the file");
        assert_eq!(
            reopened.check(&old.access_token, "hospb", &CERT, 1_001),
            Err(TokenRejection::Unknown)
        );
        let json_files = std::fs::read_dir(dir.join("tokens"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "json")
            })
            .count();
        assert_eq!(
            json_files, 0,
            "token files are read into the journal and removed"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_grant_without_a_certificate_is_not_issued() {
        let dir = state();
        let store = TokenStore::open(&dir, 1_000).unwrap();
        let err = store
            .issue(unbound(TokenKind::Notify, None), 1_000)
            .err()
            .unwrap();
        assert!(err.0.contains("bound to a TLS client certificate"), "{err}");
        assert!(store.is_empty());
        drop(store);
        assert!(TokenStore::open(&dir, 1_000).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn token_files_without_a_certificate_binding_grant_nothing() {
        let dir = state();
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let bound = grant(TokenKind::Notify, None).valid(900, 1_200);
        let mut record = serde_json::to_value(Record::from(&bound)).unwrap();
        assert_eq!(record["cert_sha256"], b64::hex(&CERT).as_str());
        record.as_object_mut().unwrap().remove("cert_sha256");
        let hash = hash_token("an-unbound-token");
        let file = tokens.join(format!("{}.json", b64::hex(&hash)));
        std::fs::write(&file, serde_json::to_vec(&record).unwrap()).unwrap();
        let reopened = TokenStore::open(&dir, 1_000).unwrap();
        assert_eq!(
            reopened.check("an-unbound-token", "hospb", &CERT, 1_001),
            Err(TokenRejection::Unknown)
        );
        assert!(reopened.is_empty());
        assert!(!file.exists(), "removed like any unreadable token file");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn zorgviewer_grant() -> Grant {
        let scopes = Scopes::grant(Some(
            "user/Patient.read user/Observation.search system/Binary.read",
        ))
        .unwrap();
        Grant::zorgviewer(
            "zv",
            "zorgviewer-client",
            ZorgviewerAccess::new(
                scopes,
                Oid::parse("urn:oid:2.16.840.1.113883.2.4.3.8").unwrap(),
                Some("UMCG".into()),
                Some("dr. J. Jansen".into()),
                vec!["309343006".into()],
            ),
        )
        .bound_to(CERT)
    }

    #[test]
    fn a_zorgviewer_grant_reads_what_its_scopes_allow() {
        let g = zorgviewer_grant();
        assert_eq!(g.kind(), TokenKind::Zorgviewer);
        assert_eq!(g.kind().name(), "zorgviewer");
        let z = g.zorgviewer_access().unwrap();
        assert!(z.allows("Patient", Interaction::Read));
        assert!(z.allows("Patient", Interaction::Search));
        assert!(z.allows("Observation", Interaction::Search));
        assert!(!z.allows("Observation", Interaction::Read));
        assert!(z.allows("Binary", Interaction::Read));
        assert!(!z.allows("Condition", Interaction::Search));
        assert_eq!(
            z.subject_organization_id().as_str(),
            "2.16.840.1.113883.2.4.3.8"
        );
        assert_eq!(z.subject_organization(), Some("UMCG"));
        assert_eq!(z.subject_role(), ["309343006"]);
        assert_eq!(
            g.requesting_org_claim(),
            "urn:oid:2.16.840.1.113883.2.4.3.8"
        );
        assert_eq!(
            (g.requesting_org(), g.authorizer(), g.patient(), g.case_id()),
            (None, None, None, None)
        );
        let debug = format!("{g:?} {z:?}");
        assert!(!debug.contains("Jansen"), "{debug}");
        // Twiin grants have no Zorgviewer access.
        assert!(grant(TokenKind::Notify, None).zorgviewer_access().is_none());
    }

    #[test]
    fn a_zorgviewer_grant_survives_a_restart() {
        let dir = state();
        let store = TokenStore::open(&dir, 1_000).unwrap();
        let zv = store.issue(zorgviewer_grant(), 1_000).unwrap();
        let notify = store.issue(grant(TokenKind::Notify, None), 1_000).unwrap();
        drop(store);
        let reopened = TokenStore::open(&dir, 1_000).unwrap();
        assert_eq!(reopened.len(), 2);
        let g = reopened
            .check(&zv.access_token, "zv", &CERT, 1_001)
            .unwrap();
        assert_eq!(g, zv.grant, "every field survives the file");
        assert_eq!(
            g.zorgviewer_access().unwrap().scopes().to_string(),
            "user/Patient.read user/Observation.search system/Binary.read"
        );
        let n = reopened
            .check(&notify.access_token, "hospb", &CERT, 1_001)
            .unwrap();
        assert_eq!(n, notify.grant);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn token_files_of_every_kind_read_back_and_mixed_ones_do_not() {
        // A notify file as written before Zorgviewer grants existed.
        let old_notify = r#"{"kind":"notify","partner":"hospb","client_id":"c",
            "requesting_org":"urn:oid:2.16.528.1.1007.3.3.87654321","authorizer":null,
            "patient":null,"authorization_base":null,"case_id":null,"issued_at":1,"expires_at":2,
            "cert_sha256":"c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1"}"#;
        let g = serde_json::from_str::<Record>(old_notify)
            .unwrap()
            .into_grant()
            .unwrap();
        assert_eq!(g.kind(), TokenKind::Notify);
        assert_eq!(g.cert_sha256(), Some(&CERT));
        let zv = r#"{"kind":"zorgviewer","partner":"zv","client_id":"c",
            "requesting_org":"urn:oid:2.16.840.1.113883.2.4.3.8","authorizer":null,
            "patient":null,"authorization_base":null,"case_id":null,
            "zorgviewer":{"scope":"user/Patient.read","subject_organization":null,"subject_name":null},
            "issued_at":1,"expires_at":2,
            "cert_sha256":"c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1c1"}"#;
        let g = serde_json::from_str::<Record>(zv)
            .unwrap()
            .into_grant()
            .unwrap();
        assert_eq!(g.kind(), TokenKind::Zorgviewer);
        assert!(g.zorgviewer_access().unwrap().subject_role().is_empty());
        for bad in [
            // Zorgviewer without its fields, with a patient, with a bad scope or OID.
            zv.replace(r#""zorgviewer":{"scope":"user/Patient.read","subject_organization":null,"subject_name":null},"#, ""),
            zv.replace(r#""patient":null"#, r#""patient":"999999151""#),
            zv.replace("user/Patient.read", "user/Nope.read"),
            zv.replace("urn:oid:2.16.840.1.113883.2.4.3.8", "2.16.840.1.113883.2.4.3.8"),
            zv.replace("urn:oid:2.16.840.1.113883.2.4.3.8", "urn:oid:UMCG"),
            // Without the certificate binding, or with a malformed one.
            old_notify.replace(r#""cert_sha256":"c1c1"#, r#""other":"c1c1"#),
            zv.replace(r#""cert_sha256":"c1c1"#, r#""other":"c1c1"#),
            old_notify.replace(r#""cert_sha256":"c1c1"#, r#""cert_sha256":"c1"#),
            // A notify grant carrying Zorgviewer fields.
            old_notify.replace(
                r#""case_id":null"#,
                r#""case_id":null,"zorgviewer":{"scope":"user/Patient.read","subject_organization":null,"subject_name":null}"#,
            ),
        ] {
            let record = serde_json::from_str::<Record>(&bad).unwrap();
            assert!(record.into_grant().is_none(), "{bad}");
        }
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
            store.check(&a.access_token, "hospb", &CERT, 1_001),
            Err(TokenRejection::Unknown)
        );
        assert!(store.check(&b.access_token, "hospb", &CERT, 1_001).is_ok());
        assert_eq!(store.sweep(1_300), 1);
        assert!(store.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Token files of the one-file-per-token layout are read into the
    /// journal (expired and unreadable ones dropped) and then removed.
    #[test]
    fn token_files_are_migrated_into_the_journal() {
        let dir = state();
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let live = grant(TokenKind::Pull, Some("base-1")).valid(900, 1_200);
        let hash = hash_token("the-old-token");
        let json = serde_json::to_vec(&Record::from(&live)).unwrap();
        std::fs::write(tokens.join(format!("{}.json", b64::hex(&hash))), json).unwrap();
        std::fs::write(tokens.join("garbage.json"), b"{").unwrap();
        let store = TokenStore::open(&dir, 1_000).unwrap();
        assert_eq!(
            store.check("the-old-token", "hospb", &CERT, 1_001),
            Ok(live.clone())
        );
        drop(store);
        let reopened = TokenStore::open(&dir, 1_000).unwrap();
        assert_eq!(
            reopened.check("the-old-token", "hospb", &CERT, 1_001),
            Ok(live)
        );
        let names: Vec<String> = std::fs::read_dir(&tokens)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.ends_with(".json")), "{names:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A revocation is in the journal: the token stays refused after a
    /// restart, also after the sweep rewrote the journal.
    #[test]
    fn a_revoked_token_stays_revoked_across_a_restart_and_a_rewrite() {
        let dir = state();
        let store = TokenStore::open(&dir, 1_000).unwrap();
        let a = store
            .issue(grant(TokenKind::Pull, Some("base-1")), 1_000)
            .unwrap();
        let b = store
            .issue(grant(TokenKind::Pull, Some("base-2")), 1_000)
            .unwrap();
        assert_eq!(store.revoke_base("base-1"), 1);
        drop(store);
        let reopened = TokenStore::open(&dir, 1_001).unwrap();
        assert_eq!(
            reopened.check(&a.access_token, "hospb", &CERT, 1_001),
            Err(TokenRejection::Unknown)
        );
        assert!(
            reopened
                .check(&b.access_token, "hospb", &CERT, 1_001)
                .is_ok()
        );
        let c = reopened
            .issue(grant(TokenKind::Pull, Some("base-1")), 1_001)
            .unwrap();
        assert_eq!(reopened.revoke_base("base-1"), 1);
        let held = TokenStore::grants_at(&dir).unwrap();
        assert_eq!(held.len(), 1, "what a check beside the store reads");
        assert_eq!(held[0].authorization_base(), Some("base-2"));
        reopened.compact().unwrap();
        drop(reopened);
        let again = TokenStore::open(&dir, 1_002).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(
            again.check(&c.access_token, "hospb", &CERT, 1_002),
            Err(TokenRejection::Unknown)
        );
        assert!(again.check(&b.access_token, "hospb", &CERT, 1_002).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Tokens issued at once share flushes; every token handed out is
    /// accepted after a restart.
    #[test]
    fn concurrent_issues_share_flushes_and_all_survive_a_restart() {
        let dir = state();
        let store = TokenStore::open(&dir, 1_000).unwrap();
        let issued = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..30 {
                        let t = store.issue(grant(TokenKind::Notify, None), 1_000).unwrap();
                        issued.lock().unwrap().push(t.access_token);
                    }
                });
            }
        });
        assert!(store.journal.batches() <= 240);
        drop(store);
        let reopened = TokenStore::open(&dir, 1_000).unwrap();
        let issued = issued.into_inner().unwrap();
        assert_eq!(reopened.len(), issued.len());
        for t in &issued {
            assert!(reopened.check(t, "hospb", &CERT, 1_001).is_ok());
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A power cut between the write and the flush: `issue` fails, so the
    /// token is never handed out, and it is not accepted after a restart.
    #[test]
    fn a_token_whose_flush_failed_is_never_handed_out() {
        let dir = state();
        let store = TokenStore::open(&dir, 1_000).unwrap();
        let kept = store.issue(grant(TokenKind::Notify, None), 1_000).unwrap();
        store.insecure_test_fail_syncs(1);
        let err = store
            .issue(grant(TokenKind::Notify, None), 1_000)
            .err()
            .expect("a failed flush must not hand out a token");
        assert!(err.to_string().contains("fdatasync"), "{err}");
        assert_eq!(store.len(), 1, "the unflushed grant is not held either");
        drop(store);
        let reopened = TokenStore::open(&dir, 1_000).unwrap();
        assert_eq!(reopened.len(), 1);
        assert!(
            reopened
                .check(&kept.access_token, "hospb", &CERT, 1_001)
                .is_ok()
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
