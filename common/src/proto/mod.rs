//! The tunnel wire protocol: framing, control messages and the session state machine.
//! Everything here is free of I/O and clocks; `crate::tunnel` drives it over a byte stream.

pub mod control;
pub mod frame;
pub mod session;

pub use control::{CloseCode, Control, Features, Hello, TunnelConfig};
pub use frame::{Frame, FrameDecoder, FrameError, FrameType};
pub use session::{Event, Negotiated, Offload, Role, Session, SessionError, Timers};
