//! Benchmarks live in `benches/`; run them with `cargo bench -p benches`.
//! Helpers shared by the benches are here so they are compiled (and checked) by `cargo test`.

/// Deterministic shuffle (xorshift Fisher-Yates) so runs are comparable.
pub fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<u32> = (0..100).collect();
        super::shuffle(&mut v, 42);
        assert_ne!(v, (0..100).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..100).collect::<Vec<_>>());
    }
}
