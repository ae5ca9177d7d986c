//! Every metric proxyd emits, in one place. Names and labels are promises to operators.

/// Counter, labels `ecosystem`, `status`: HTTP requests answered.
pub const REQUESTS_TOTAL: &str = "proxyd_requests_total";
/// Histogram, label `ecosystem`: request handling time in seconds (to response headers).
pub const REQUEST_DURATION_SECONDS: &str = "proxyd_request_duration_seconds";
/// Counter, label `ecosystem`: artifact GETs served from the cache, redirected or streamed.
pub const CACHE_HITS_TOTAL: &str = "proxyd_cache_hits_total";
/// Counter, label `ecosystem`: artifact GETs that had to go upstream.
pub const CACHE_MISSES_TOTAL: &str = "proxyd_cache_misses_total";
/// Counter, labels `ecosystem`, `outcome` (`redirect`, `fallback_unsupported`, `fallback_error`).
pub const DIRECT_SERVE_TOTAL: &str = "proxyd_direct_serve_total";
/// Counter, labels `ecosystem`, `kind` (`artifact`, `metadata`): requests sent upstream.
pub const UPSTREAM_REQUESTS_TOTAL: &str = "proxyd_upstream_requests_total";
/// Counter, labels `ecosystem`, `kind`: upstream failures, integrity mismatches included.
pub const UPSTREAM_ERRORS_TOTAL: &str = "proxyd_upstream_errors_total";
/// Gauge: bytes of cached artifacts.
pub const CACHE_SIZE_BYTES: &str = "proxyd_cache_size_bytes";
/// Gauge: number of cached artifacts.
pub const CACHED_ARTIFACTS: &str = "proxyd_cached_artifacts";
/// Counter: bytes evicted to stay under `storage.max_size`.
pub const EVICTED_BYTES_TOTAL: &str = "proxyd_evicted_bytes_total";
/// Gauge: 1 when the backend can sign and direct-serve is on.
pub const DIRECT_SERVE_ACTIVE: &str = "proxyd_direct_serve_active";
/// Counter, label `ecosystem`: requests that waited for another request's fetch.
pub const COALESCED_FETCHES_TOTAL: &str = "proxyd_coalesced_fetches_total";
/// Counter, labels `ecosystem`, `outcome` (`live`, `hit`, `failed`, `timeout`): how those waits
/// ended (`live`: joined before the first byte and streamed alongside the first request).
pub const FETCH_WAITS_TOTAL: &str = "proxyd_fetch_waits_total";
/// Counter: readers of a fetch in progress that fell behind it and continued from storage.
pub const SLOW_READERS_TOTAL: &str = "proxyd_slow_readers_total";
/// Counter, label `ecosystem`: downloads served from the upstream without caching because
/// storage failed.
pub const STORAGE_BYPASS_TOTAL: &str = "proxyd_storage_bypass_total";
/// Counter, label `operation`: index calls that failed (a failed lookup is served as a miss).
pub const INDEX_ERRORS_TOTAL: &str = "proxyd_index_errors_total";
/// Counter, label `outcome` (`fetched`, `other_node`, `took_over`, `timeout`, `index_error`):
/// how fetch leases were settled.
pub const FETCH_LEASES_TOTAL: &str = "proxyd_fetch_leases_total";
