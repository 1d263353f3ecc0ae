//! What travels to subscribers: events (a version of a topic's document, or an error) and
//! their encodings, made once per protocol and format and shared by every subscriber.

pub mod encode;
pub mod event;
