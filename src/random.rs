//! The one source of randomness: aws-lc-rs's generator (already the TLS and JWT crypto provider),
//! for secrets and for retry jitter alike. It seeds itself once per process, expensively (jitter
//! entropy), so the server draws once at start (`startup::serve`).

use aws_lc_rs::rand;

/// `N` random bytes (secrets, ids that must not be guessed).
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    rand::fill(&mut buf).expect("the system random generator works");
    buf
}

/// A random (version 4) UUID, from this generator (request ids, claim owners, nonces).
pub fn uuid() -> uuid::Uuid {
    uuid::Builder::from_random_bytes(bytes::<16>()).into_uuid()
}

/// A uniformly random number in `[0, 1)` (jitter).
pub fn fraction() -> f64 {
    (u64::from_le_bytes(bytes::<8>()) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn fractions_stay_in_range_and_vary() {
        let draws: Vec<f64> = (0..1000).map(|_| super::fraction()).collect();
        assert!(draws.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(draws.iter().any(|f| *f < 0.1) && draws.iter().any(|f| *f > 0.9));
    }
}
