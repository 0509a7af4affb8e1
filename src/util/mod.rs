//! Small shared helpers with no protocol knowledge: time and HTTP dates,
//! random ids, base64url, percent-encoding, URLs, `Retry-After`, durable file
//! writes, value parsing, the reduction of outside text for logs. Each codec is written once, here; the hostile inputs
//! every caller must treat alike are tested in one table (`hostile_inputs`).

pub mod b64;
pub mod durable;
pub mod group_commit;
#[cfg(test)]
mod hostile_inputs;
pub mod percent;
pub mod random;
pub mod retry_after;
pub mod time;
pub mod untrusted;
pub mod url;
pub mod values;
