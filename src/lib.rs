//! realtime-stack: provisions a scalable realtime chat service on AWS from one
//! `stack.yaml`, and removes it again. `main.rs` parses the command line and calls
//! [`commands`]; each AWS concern has its own module, driven by the service-agnostic
//! [`engine`].

pub mod artifact;
pub mod aws;
pub mod binary;
pub mod bucket;
pub mod cache;
pub mod canary;
pub mod certificate;
pub mod commands;
pub mod cost;
pub mod deploy;
pub mod dns;
pub mod drill;
pub mod engine;
pub mod fleet;
pub mod group;
pub mod identity;
pub mod instances;
pub mod load_balancer;
pub mod local;
pub mod names;
pub mod network;
pub mod platform;
pub mod policy;
pub mod programs;
pub mod retag;
pub mod spec;
pub mod stack;
