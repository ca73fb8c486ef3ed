//! Randomness that needs no extra dependency: std's `RandomState` is seeded from the
//! operating system once per thread and stepped for every new instance, so hashing
//! through a fresh one gives an unpredictable value. Good for epochs and jitter; not for
//! secrets.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::time::{SystemTime, UNIX_EPOCH};

/// 64 unpredictable bits.
pub fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}

/// Uniform in `[0, 1)`.
pub fn random_fraction() -> f64 {
    // 53 bits: exactly the precision of an f64 mantissa.
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// 128 random bits as 32 hex digits.
pub fn random_token() -> String {
    format!("{:016x}{:016x}", random_u64(), random_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_and_fractions_stay_in_range() {
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 32);
        let fractions: Vec<f64> = (0..1000).map(|_| random_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let mean = fractions.iter().sum::<f64>() / 1000.0;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
