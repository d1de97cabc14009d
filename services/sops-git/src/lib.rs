//! SOPS-on-Git storage backend: every TypeInstance revision is a
//! SOPS-encrypted (age) YAML file in a Git repository. See README.md for the
//! layout and guarantees.

pub mod backend;
pub mod config;
pub mod crash;
pub mod datadir;
pub mod pack;
pub mod rotate;
pub mod sops;
pub mod store;
