//! Where events come from: the source operators with per-partition watermarks ([`source`]),
//! partitions and how their records decode ([`partition`]), JSON-lines
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
pub mod source;
pub mod truth;
