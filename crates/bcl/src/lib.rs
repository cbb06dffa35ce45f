//! `bcl`: backward-compatible learning for retrieval, with prototype perturbation.
//!
//! A new embedding model is trained so that its query vectors can be searched against a
//! gallery embedded by an older model (no backfilling). The modules follow the concepts of
//! the project's METHOD.md: [`data`], [`model`], [`loss`], [`perturb`], [`train`], [`eval`],
//! [`report`], [`adapt`] (maps fitted after training between two models' spaces) and
//! [`gallery`] (deployment: a store that outlives its model), with [`run`]
//! wiring them into the steps the `bcl` binary exposes, [`experiment`] running many of them,
//! [`files`] the file I/O, [`layout`] the names of every file a run writes and [`table`] the tables they share, [`exec`] how a network runs on
//! its device (bfloat16 autocast, channels-last).

/// The collectives of data-parallel runs (the `bcl-dist` crate).
pub use bcl_dist as dist;

pub mod adapt;
pub mod data;
pub mod eval;
pub mod exec;
pub mod experiment;
pub mod files;
pub mod gallery;
pub mod layout;
pub mod loss;
pub mod model;
pub mod npy;
pub mod perturb;
pub mod report;
pub mod run;
pub mod table;
pub mod train;
