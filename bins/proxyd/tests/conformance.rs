//! The ecosystem conformance suite (`proxyd_testkit::ecosystem_suite`) run for every
//! ecosystem, on filesystem storage and on S3 (s3s-fs) with direct-serve. A new ecosystem adds
//! a fixture to the suite and one line here.

use proxyd_testkit::ecosystem_suite::{self as suite, Kind, Storage};

const BIN: &str = env!("CARGO_BIN_EXE_proxyd");

macro_rules! checks {
    ($kind:expr, $storage:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                suite::$check(BIN, $kind, $storage).await;
            }
        )*
    };
}

/// Every check of the suite, for one ecosystem on one storage.
macro_rules! all_checks {
    ($kind:expr, $storage:expr) => {
        checks!($kind, $storage;
            miss_then_hit, fifty_concurrent_misses_make_one_fetch,
            digest_mismatch_is_refused, dropped_upstream_aborts_the_client,
            upstream_failures_give_502_and_504, metadata_cut_short_is_never_kept,
            served_offline_after_warm_up, bad_paths_reach_nothing,
            head_is_never_redirected, range_and_conditionals, metadata_points_at_proxyd,
            unknown_names_reach_upstream_once);
    };
}

macro_rules! conformance {
    ($name:ident, $kind:expr) => {
        mod $name {
            use super::*;
            mod fs {
                use super::*;
                all_checks!($kind, Storage::Fs);
            }
            mod s3 {
                use super::*;
                all_checks!($kind, Storage::S3);
            }
        }
    };
}

conformance!(npm, Kind::Npm);
conformance!(pypi, Kind::PyPi);
conformance!(cargo, Kind::Cargo);
conformance!(maven, Kind::Maven);
conformance!(debian, Kind::Debian);
conformance!(go, Kind::Go);
conformance!(oci, Kind::Oci);
