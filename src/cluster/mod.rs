//! Cluster mode: several servers sharing one chat through Redis (SPEC §4).

pub mod link;
pub mod reconnect;
pub mod socket;
pub mod url;
pub mod wire;
