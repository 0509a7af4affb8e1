//! FHIR reads and searches as a pull token's holder sends them (path, query
//! with search parameters, `_include`, `_sort`, `_count`, page links,
//! `_format`, and `Accept`), answered over one case: never panics; the
//! answer is a refusal with an OperationOutcome or a FHIR resource that
//! reads back, and a search never returns more than the case holds.
//!
//! Input: the path after `/fhir` up to the first `?` (the query follows);
//! after a line break, the `Accept` header.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use np_agent::audit::AuditLog;
use np_agent::cases::{Case, CaseStore};
use np_agent::fhir::{self, Limits};
use np_agent::ids::{Bsn, OrgId};
use np_agent::oauth::grants::{CaseBinding, Grant};
use np_agent::serve::{self, PageKey, ServeRequest};

const NOW: i64 = 1_796_191_098;
const BASE: &str = "https://np.hospital-a.example:8443/fhir";
/// Resources in the demo case.
const IN_CASE: usize = 9;
/// The state folder of one run: this and the process id.
const PREFIX: &str = "np-fuzz-search-";
/// Requests written to one audit trail before it is replaced by an empty one
/// (a long run would fill the memory file system with audit lines).
const AUDIT_ROUNDS: u32 = 10_000;

struct Site {
    dir: PathBuf,
    cases: CaseStore,
    /// The trail, the requests written to it, and its number.
    audit: Mutex<(AuditLog, u32, u32)>,
    grant: Grant,
    key: PageKey,
}

/// The state folder of audit trail `n`.
fn audit_dir(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("audit-{n}"))
}

/// One case on a memory file system where there is one (the audit trail
/// takes a line per request).
fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let root = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        // libFuzzer exits without running destructors: remove what runs that
        // ended left behind (their process is gone), then make our own.
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(PREFIX) {
                if !PathBuf::from(format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(format!("{PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("state dir");
        let cases = CaseStore::open(&dir).expect("case store");
        let audit = AuditLog::open(&audit_dir(&dir, 0)).expect("audit trail");
        let bsn = Bsn::parse("999999151").expect("bsn");
        let owner = OrgId::Ura("87654321".into());
        let mut case =
            Case::new("hospb", "c-42", &bsn, Some(&owner), NOW - 60, NOW + 86_400).expect("case");
        case.version = 1;
        cases
            .write_data("hospb", "c-42", 1, np_agent::demo::SAMPLE.as_bytes())
            .expect("case data");
        cases.save(&case).expect("case record");
        let grant = Grant::pull(
            "hospb",
            "np.hospb.example",
            OrgId::Ura("87654321".into()),
            Some(OrgId::Ura("12345678".into())),
            CaseBinding {
                authorization_base: case.authorization_base.clone(),
                case_id: "c-42".into(),
            },
            bsn,
        )
        .valid(NOW - 10, NOW + 290);
        Site {
            dir,
            cases,
            audit: Mutex::new((audit, 0, 0)),
            grant,
            key: PageKey::from_bytes([7; 32]),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (target, accept) = match text.split_once('\n') {
        Some((t, a)) => (t, Some(a)),
        None => (text, None),
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let site = site();
    let mut audit = site.audit.lock().unwrap_or_else(|p| p.into_inner());
    if audit.1 == AUDIT_ROUNDS {
        let (old, next) = (audit.2, audit.2 + 1);
        audit.0 = AuditLog::open(&audit_dir(&site.dir, next)).expect("audit trail");
        audit.1 = 0;
        audit.2 = next;
        let _ = std::fs::remove_dir_all(audit_dir(&site.dir, old));
    }
    audit.1 += 1;
    let req = ServeRequest {
        method: "GET",
        path,
        query,
        accept,
        request_id: "fuzz",
    };
    let answer = serve::handle_with_key(
        &site.cases,
        &site.grant,
        &req,
        &audit.0,
        BASE,
        NOW,
        &site.key,
    );
    assert!(
        matches!(answer.status, 200 | 400 | 403 | 404 | 406 | 410),
        "{} for {target:?}",
        answer.status
    );
    let content_type = answer
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let value = if content_type.contains("json") {
        fhir::parse_json(&answer.body, &Limits::default())
    } else if content_type.contains("xml") {
        fhir::xml_to_json(&answer.body, fhir::FhirVersion::Stu3, &Limits::default())
    } else {
        // A Binary read answered as its own content type.
        assert_eq!(answer.status, 200, "{target:?}");
        return;
    };
    let value = match value {
        Ok(v) => v,
        Err(e) => panic!("{} answer does not read back: {e}", answer.status),
    };
    if answer.status != 200 {
        assert_eq!(value["resourceType"], "OperationOutcome");
    } else if value["resourceType"] == "Bundle" {
        let entries = value["entry"].as_array().map_or(0, Vec::len);
        assert!(entries <= IN_CASE, "{entries} entries for {target:?}");
    }
});
