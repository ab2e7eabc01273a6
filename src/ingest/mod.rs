//! Where events come from: partitions with per-partition watermarks ([`partition`]), JSON-lines
//! files and in-memory inputs ([`files`]), the embedded generator ([`generator`]) and providers'
//! records mapped to events ([`mapping`]); the generator's ground truth ([`truth`]) and its
//! events written as providers' raw records ([`provider_records`]). Kafka partitions are in
//! [`crate::kafka::source`].

pub mod dead_letter_burst;
pub mod files;
pub mod generator;
pub mod lines;
pub mod mapping;
pub mod partition;
pub mod provider_records;
pub mod truth;
