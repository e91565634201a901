//! Control of running seeds from other `chiral` commands: each serving process answers on
//! `<data dir>/run/<pid>.sock`.
//! - [`wire`]: the protocol, one JSON line each way (pure: bytes in, bytes out);
//! - [`socket`]: the tokio layer binding, serving and querying the sockets.

pub mod socket;
pub mod wire;

pub use socket::{endpoints, pid_alive, request, socket_path, ControlError, ControlSocket, Endpoint};
pub use wire::{LiveSeed, Request, Response, SeedControl};
