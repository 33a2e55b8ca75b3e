//! Everything that faces SSH clients of the built-in server: the TCP listener and its admission
//! limits before authentication (`listener`, `admission`) and the russh handler that
//! authenticates and starts the tunnel (`handler`). Sessions themselves are `client_session`'s;
//! nothing here is used by the control socket.

pub mod admission;
pub mod handler;
pub mod listener;
