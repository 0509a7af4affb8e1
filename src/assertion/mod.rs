//! TA Notified Pull assertions (spec §3, §5, §6): claim sets, the replay cache,
//! and the checks the token endpoint applies to an incoming pair.

pub mod claims;
pub mod replay;

pub use claims::{ClaimError, Claims, Expectations, IuaClaims, Outgoing};
pub use replay::{JtiEntry, ReplayCache, Seen};
