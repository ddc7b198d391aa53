//! The one place where the XDP datapath and the controller agree on bytes.
//!
//! Every map key and value is a `#[repr(C)]` struct with explicit padding and a size assertion.
//! Addresses are four `u32` words holding the address bytes in network order (IPv4 in word 0,
//! the rest zero), so IPv6 needs no new layout. Ports are stored in network byte order.
#![no_std]

mod kernel_enum;

pub mod addr;
pub mod backend;
pub mod checksum;
pub mod cluster;
pub mod flow;
pub mod fragment;
pub mod hash;
pub mod limits;
pub mod maps;
pub mod next_hop;
pub mod programs;
pub mod service;
pub mod settings;
pub mod stats;
pub mod sticky;
pub mod trace;

#[cfg(feature = "user")]
mod pod;
