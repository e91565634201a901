//! # chiral-host
//!
//! The host library behind the `chiral` command, for anyone building their own host binary:
//! - [`registry`]: plugin discovery (search path, first wins), loading ([`loader`]) and dispatch
//!   of identifiers by scheme/suffix with priorities and user overrides;
//! - [`session`]: downloads over one or more sources through the SDK's multi-source engine,
//!   whole downloads by a plugin, and seeding;
//! - [`config`]: the TOML config file and default directories;
//! - [`daemon`]: the long-lived node of `chiral daemon`, its HTTP API and web page;
//! - [`lifecycle`]: seeds listed, stopped and forgotten across processes, through each serving
//!   process's [`control`] socket and the [`seedbook`] (`seeds.json`).

pub mod config;
pub mod control;
pub mod daemon;
pub mod lifecycle;
pub mod loader;
pub mod payments;
pub mod registry;
pub mod seedbook;
pub mod session;
pub mod statefile;

pub use chiral_sdk::engine;
pub use registry::Registry;
pub use session::Host;

/// glibc's malloc gives freed memory back to the kernel as soon as 128 KiB to a few MiB of it
/// lie free at the top of a heap, and serves blocks past its mmap threshold with fresh mappings.
/// A download or a seed allocates and frees a piece (1 MiB and more) per piece, so each one
/// came back as fresh pages: one page fault per 4 KiB moved and a zeroing pass, measured as a
/// quarter of `chiral get`'s CPU time for 1 GiB from a local peer. Keeping up to 64 MiB of free
/// heap and serving blocks up to 32 MiB from the heap lets the next piece reuse the last one's
/// pages. It costs no memory in use: the peak stays what the peak use was. Host binaries call it
/// first thing in `main` (it is safe at any time: glibc takes its allocator lock).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters, under glibc's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

/// Raises the soft limit on open files to the hard limit (at most 65,536). Many systems start
/// processes at 1,024, which a seed with its listeners' connection caps (1,024 peers, 1,024
/// HTTP clients, 256 FTP sessions) and its open files could exceed. Host binaries call it first
/// thing in `main`; a failure only leaves the limit as it was.
pub fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = lim.rlim_max.min(65_536);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
