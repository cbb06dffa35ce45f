//! One file per compatibility method: its [`super::MethodSpec`] (name, description, needs,
//! settings and their checks, sweep knobs, construction). Each is registered by one line in
//! [`super::method::REGISTRY`].

pub mod advbct;
pub mod bct;
pub mod independent;
pub mod l2;
pub mod lce;
pub mod ndpp;
pub mod odpp;
pub mod ract;
pub mod unibct;
