//! One file per compatibility method: its registry entry `Spec` (a [`super::MethodSpec`]: name,
//! description, needs, properties, settings and their checks, sweep knobs, construction), its
//! settings type and its loss. Each is registered by one line in the registry's `BUILTIN`
//! list (`loss/method.rs`). A method named with a hyphen lives in the file of that name with
//! an underscore (`lce-ndpp`: `lce_ndpp.rs`).

pub mod advbct;
pub mod bct;
pub mod independent;
pub mod l2;
pub mod lce;
pub mod lce_ndpp;
pub mod lce_odpp;
pub mod ndpp;
pub mod odpp;
pub mod ract;
pub mod unibct;
