//! Small shared helpers with no protocol knowledge: time, random ids, base64url,
//! durable file writes, value parsing.

pub mod b64;
pub mod durable;
pub mod random;
pub mod time;
pub mod values;
