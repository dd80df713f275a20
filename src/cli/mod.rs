//! Subcommands of the `pipewright` tool.

pub(crate) mod demo;
pub(crate) mod live;
