//! Notification Tasks in (JSON or XML, sniffed): never panics, and every
//! read and query of an accepted Task stays under the partner's FHIR base
//! once joined to it, the property the pull relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use np_agent::ids::OrgId;
use np_agent::receiver::task::{self, Expect};
use np_agent::receiver::wire;
use np_agent::util::url;

const BASE: &str = "https://sender.example:8443/fhir/stu3";

fuzz_target!(|data: &[u8]| {
    let _ = url::is_under(BASE, &String::from_utf8_lossy(data));
    let Ok(body) = wire::read_task_body(data, None) else {
        return;
    };
    let expect = Expect {
        ours: vec![OrgId::Ura("87654321".into()), OrgId::Agb("44446666".into())],
        requester: OrgId::Ura("12345678".into()),
        patient: None,
        now: 1_795_348_800,
    };
    let (plan, _) = task::workflow_plan(&body.value);
    let accepted = task::validate(body.value, &expect).ok();
    let plans = accepted.iter().map(|t| t.plan().clone()).chain([plan]);
    for plan in plans {
        for rel in plan.reads.iter().chain(&plan.queries) {
            let joined = url::join(BASE, rel);
            assert!(url::is_under(BASE, &joined), "{rel:?} leaves the base");
        }
    }
});
