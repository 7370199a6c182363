//! placeholder
pub mod error;
pub mod fabric_rules;
pub mod paths;
pub mod policy;
pub mod version;
pub use error::Error;
