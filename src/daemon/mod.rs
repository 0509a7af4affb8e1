//! The daemon: `np-agent run`.
//!
//! | file | job | I/O |
//! |---|---|---|
//! | [`assembly`] | configuration, TLS, keys and stores → the running parts ([`Stores`] outlive a reload, [`Shared`] is rebuilt by one); which handler runs which spool work | opens the state folders, reads key files |
//! | [`router`] | one partner request → the endpoint that answers it: certificate → partner, bearer token → grant, kind → endpoint | none of its own; the endpoints do theirs |
//! | [`lifecycle`] | listeners, workers and the outbox thread started in order, `READY=1`, SIGHUP reload, hourly TLS refresh, SIGTERM drain | sockets, signals, sd_notify |

mod assembly;
mod lifecycle;
mod router;

pub use assembly::{
    Shared, StartupError, Stores, build_shared, check_material, circuit_policy, load_signing_key,
    retry_policy,
};
pub use lifecycle::{DRAIN_GRACE, TLS_RELOAD_INTERVAL, run};
pub use router::Router;
