//! proxyd: a caching proxy for package registries (placeholder until the front lands).

fn main() {}
