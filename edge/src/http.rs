//! HTTP plumbing shared by both planes, one concern per file: the request context
//! ([`context`]), observation ([`observe`]), the edge rules ([`guard`]), the tenant header
//! ([`tenant`]), credentials and CSRF ([`credentials`]), client addresses ([`client_ip`]),
//! the envelope of framework-made answers ([`envelope`]), the ops routes and readiness
//! ([`ops`]) and serving listeners ([`serve`]). Everything is re-exported here.

pub mod client_ip;
pub mod context;
pub mod credentials;
pub mod envelope;
pub mod guard;
pub mod observe;
pub mod ops;
pub mod serve;
pub mod tenant;

pub use client_ip::*;
pub use context::*;
pub use credentials::*;
pub use envelope::*;
pub use guard::*;
pub use observe::*;
pub use ops::*;
pub use serve::*;
pub use tenant::*;
