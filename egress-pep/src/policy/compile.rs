//! (in progress)
#![allow(missing_docs)]
pub struct CompiledPolicy;
