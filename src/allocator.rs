//! Tuning of the C allocator for a long-running gateway (glibc only; elsewhere nothing).
//!
//! glibc malloc by default serves allocations from 128 KiB up with `mmap` (raising that
//! threshold on the fly) and gives the top of its heap back to the kernel once 128 KiB of it is
//! free. A bulk tunnel allocates and frees its buffers every time a socket drains (rustls's
//! 16 KiB plaintext chunks, the read-ahead and splice buffers of up to
//! `egress.limits.stream_buffer_bytes`, so that an idle tunnel holds none): with the defaults
//! each cycle maps or trims memory, and the page faults that follow cost about a third of a bulk
//! tunnel's CPU (measured with `perf` on `bench/egress.sh`). With the thresholds below, buffers
//! are reused from the heap; the cost is that up to [`TRIM_THRESHOLD`] of free heap may stay
//! resident per arena.

/// Allocations at least this large get their own mapping, bytes (fixed: glibc stops adapting
/// the threshold once it is set). Above the largest per-direction tunnel buffer by default.
pub const MMAP_THRESHOLD: usize = 4 * 1024 * 1024;

/// Free memory at the top of a heap beyond this is returned to the kernel, bytes.
pub const TRIM_THRESHOLD: usize = 32 * 1024 * 1024;

/// Applies the thresholds; call before the runtime starts threads. An explicit
/// `GLIBC_TUNABLES=glibc.malloc.*` setting in the environment wins (operators can still tune).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("GLIBC_TUNABLES")
            .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc."))
        {
            return;
        }
        // SAFETY: mallopt only sets allocator parameters (it takes the arena locks itself); it
        // is called before any other thread exists. A refusal (0) leaves glibc's defaults, which
        // are correct, only slower.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
        }
    }
}
