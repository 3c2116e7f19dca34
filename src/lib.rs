//! Seshat: live support analytics for Slack help channels.
//!
//! The layout follows the data:
//! - [`slack`] decodes Events API bodies into [`model::Delivery`] values;
//! - [`connect`] talks to Slack through slack-morphism: Socket Mode, the helper
//!   roster and history backfill, all fed through the same ingest path;
//! - [`engine`] is the pure core: it applies deliveries to ticket state and keeps
//!   every statistic of the spec incrementally (no I/O, no clock reads);
//! - [`report`] holds the API's answer shapes;
//! - [`text`] derives titles and reads macros;
//! - [`time`] parses and prints instants.

pub mod connect;
pub mod demo;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod report;
pub mod server;
pub mod slack;
pub mod store;
pub mod text;
pub mod time;
