//! What the gateway and the backend show their operators, shared so both speak alike:
//! [`logs`] in the format the place they run wants (a terminal, a log shipper, the
//! journal), Prometheus metrics of the [`process`], and the [`admin`] HTTP port that serves
//! probes and scrapes (and answers them at the [`descriptors`] limit too); and the parsers
//! of the [`flags`] they and the load tester share.

pub mod admin;
pub mod descriptors;
pub mod flags;
pub mod logs;
pub mod metrics;
pub mod process;
