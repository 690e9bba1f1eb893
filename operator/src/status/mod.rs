//! Status of Istio objects: the `Reconciled` condition capstan writes on each object, and the
//! leader election that decides which replica writes it.
//!
//! Every replica watches the same objects and serves xDS, but only one writes status: two
//! writers would fight over the same condition and multiply API traffic. [`lease`] elects
//! that replica with a `coordination.k8s.io/v1` Lease; [`writer`] runs on every replica and
//! writes only while the election says this one leads.
//!
//! The index hands the writer, per object, what the condition should say ([`Desired`]) and
//! what the object showed when it was last watched ([`Observed`]); the writer patches only
//! where the two differ, so capstan's own writes never cause further writes.

pub mod condition;
pub mod lease;
pub mod writer;

pub use condition::{ConditionStatus, Desired, Observed, Reason};
