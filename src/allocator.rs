//! Tuning of the C allocator for a long-running gateway (glibc only; elsewhere nothing).
//!
//! glibc malloc by default serves allocations from 128 KiB up with `mmap` (raising that
//! threshold on the fly) and gives the top of its heap back to the kernel once 128 KiB of it is
//! free. A bulk tunnel allocates and frees its buffers every time a socket drains (rustls's
//! 16 KiB plaintext chunks, the read-ahead and splice buffers of up to
//! `egress.limits.stream_buffer_bytes`, so that an idle tunnel holds none): with the defaults
//! each cycle maps or trims memory, and the page faults that follow cost about a third of a bulk
//! tunnel's CPU (measured with `perf` on `bench/egress.sh`). With the thresholds below, buffers
//! are reused from the heap.
//!
//! The cost: freed memory stays with the process for reuse. Up to [`TRIM_THRESHOLD`] at the top
//! of each arena (glibc keeps up to 8 arenas per core), and memory freed inside a heap is never
//! returned anyway, so resident memory stays near the peak of buffers in use at once (at most
//! three `stream_buffer_bytes` per busy HTTP/1.1 tunnel). Buffers larger than
//! [`MMAP_THRESHOLD`] (a `stream_buffer_bytes` above 4 MiB) are mapped per use again.
//!
//! The setting is process-wide (ingress too). An operator's own `GLIBC_TUNABLES`
//! (`glibc.malloc.mmap_threshold`, `glibc.malloc.trim_threshold`) or `MALLOC_MMAP_THRESHOLD_` /
//! `MALLOC_TRIM_THRESHOLD_` setting wins, per threshold.

/// Allocations at least this large get their own mapping, bytes (fixed: glibc stops adapting
/// the threshold once it is set). Above the default largest tunnel buffer (1 MiB).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub const MMAP_THRESHOLD: usize = 4 * 1024 * 1024;

/// Free memory at the top of a heap beyond this is returned to the kernel, bytes.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub const TRIM_THRESHOLD: usize = 32 * 1024 * 1024;

/// Applies the thresholds the operator did not set; call before the runtime starts threads.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let tunables = std::env::var_os("GLIBC_TUNABLES").unwrap_or_default();
        let tunables = tunables.to_string_lossy();
        let set_by_operator = |tunable: &str, variable: &str| {
            tunables.contains(tunable) || std::env::var_os(variable).is_some()
        };
        // SAFETY: mallopt only sets allocator parameters (glibc documents it MT-safe; it locks
        // the main arena) and is given valid constants; it runs before any other thread
        // exists. A refusal (0) leaves glibc's defaults, which are correct, only slower.
        unsafe {
            if !set_by_operator("glibc.malloc.mmap_threshold", "MALLOC_MMAP_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
            }
            if !set_by_operator("glibc.malloc.trim_threshold", "MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
            }
        }
    }
}
