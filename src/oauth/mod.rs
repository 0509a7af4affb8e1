//! Our OAuth 2.0 authorization server for partners (RFC 6749 / RFC 7523) and
//! the client side that gets tokens from theirs.

pub mod client;
pub mod decide;
pub mod discovery;
pub mod endpoint;
pub mod form;
pub mod grants;
pub mod keycache;
pub mod messages;
pub mod scope;

pub use grants::{CaseBinding, Grant, TokenKind, TokenRejection, TokenStore, ZorgviewerAccess};
pub use scope::{Interaction, Scopes};
