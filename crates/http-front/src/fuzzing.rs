//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not part of the API).

use crate::artifact::{RangeRequest, parse_range};

/// Read `value` as a `Range` header for a body of `size` bytes: a part is never empty and
/// never reaches past the body.
pub fn range(value: &str, size: u64) {
    match parse_range(value, size) {
        RangeRequest::Part(r) => {
            assert!(r.start < r.end, "{value:?} {size}: {r:?}");
            assert!(r.end <= size, "{value:?} {size}: {r:?}");
            assert!(r != (0..size), "the whole body is answered as a whole");
        }
        RangeRequest::Whole | RangeRequest::Unsatisfiable => {}
    }
}
