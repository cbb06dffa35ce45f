//! One file per compatibility method: its registry entry `Spec` (a [`super::MethodSpec`]: name,
//! description, needs, properties, settings and their checks, sweep knobs, construction), its
//! settings type and its loss. Each is registered by one line in the registry's `BUILTIN`
//! list (`loss/method.rs`).

pub mod advbct;
pub mod bct;
pub mod independent;
pub mod l2;
pub mod lce;
pub mod ndpp;
pub mod odpp;
pub mod ract;
pub mod unibct;
