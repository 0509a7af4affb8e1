//! The demo's localisation step, and the stand-in OAuth server, PRS and NVI
//! it runs against ([`standin`], shared with the integration tests).

pub mod standin;
