//! Issue 9, "no bad input, lost file or signal may take the cluster down": one end-to-end
//! regression test per finding, named after it. Each file covers one area.

mod identity;
mod input;
mod limits;
mod logs;
mod orphans;
mod shutdown;
mod store;
