//! Exact, mergeable first and second moments `(n, Σx, Σx²)` of a sample, kept as fixed-point
//! integers: the one accumulator behind the paired t-tests ([`crate::analysis::stats`], on the
//! paired differences) and the two-group tests ([`crate::analysis::groups`], on each group's
//! angles). Integer addition is associative, so statistics merged from any split of the
//! sentences (chunks, streams, replicas, in any order) equal those of the whole, bit for bit.

use ethnum::{I256, U256};

/// Binary digits after the point of the fixed-point values: `D = round(d·2^64)`.
pub const EXACT_SCALE_BITS: u32 = 64;
/// Values must satisfy `|d| < 2^31` (any angle or angle difference does, in degrees or radians),
/// so that `ΣD` fits an `i128` for up to 2^32 sentences and `ΣD²` an `I256`.
pub const MAX_ABS_DIFFERENCE: f64 = 2_147_483_648.0;

/// A value (an angle or a difference of angles) as the fixed-point integer `round(d·2^64)` (ties to even): scaling by a power of
/// two is exact in f64, so only the final rounding to an integer happens, the same everywhere.
/// `None` when `d` is not finite or `|d| ≥ 2^31`.
pub fn fixed_point(d: f64) -> Option<i128> {
    if !d.is_finite() || d.abs() >= MAX_ABS_DIFFERENCE {
        return None;
    }
    Some((d * 2f64.powi(EXACT_SCALE_BITS as i32)).round_ties_even() as i128)
}

/// Mergeable sufficient statistics of one sample of values `d` (the paired differences
/// `d = a − b` of a layer, or one group's angles of a layer), kept exactly: the count `n`, `ΣD`
/// and `ΣD²` of the fixed-point values `D = round(d·2^64)`
/// ([`fixed_point`]).
///
/// Merging is integer addition, which is associative: statistics merged from any split of the
/// sentences (streamed chunks, replicas, in any order) are identical to those of the whole, so
/// the t-tests computed from them are identical bit for bit. The mean and variance are derived
/// from the exact integers and rounded to f64 only at the end ([`Self::mean`],
/// [`Self::variance`]), so there is no cancellation either. Each value is quantized to
/// 2^-64 ≈ 5.4e-20 (in the angle unit): far below what f32 hidden states resolve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExactMoments {
    n: u64,
    sum: i128,
    sum_sq: I256,
}

impl ExactMoments {
    /// Statistics from their exact parts (e.g. received from another process): `n`, `ΣD`, `ΣD²`.
    /// `None` when they cannot come from real differences (`ΣD² < 0`, or `n·ΣD² < (ΣD)²`, a
    /// negative variance, or sums without pairs).
    pub fn from_exact(n: u64, sum: i128, sum_sq: I256) -> Option<Self> {
        let s = ExactMoments { n, sum, sum_sq };
        let consistent = if n == 0 {
            sum == 0 && sum_sq == I256::ZERO
        } else {
            let (_, r, m) = s.centered();
            // n·M − r² ≥ 0, with M = Σ(D − q)² ≥ 0 and 0 ≤ r < n (so M ≥ n suffices).
            sum_sq >= I256::ZERO && m >= I256::ZERO && (m >= I256::from(n) || m.as_u128() * n as u128 >= r * r)
        };
        consistent.then_some(s)
    }

    /// Adds one fixed-point value ([`fixed_point`]).
    pub fn push_fixed(&mut self, d: i128) {
        self.n += 1;
        self.sum += d;
        self.sum_sq += I256::from(d) * I256::from(d);
    }

    /// Adds the values of another shard (exact; the order of merges does not matter).
    pub fn merge(&mut self, other: &ExactMoments) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    /// Statistics of the given values; `None` if one is out of range ([`fixed_point`]).
    pub fn from_values(values: &[f64]) -> Option<Self> {
        let mut s = ExactMoments::default();
        for &x in values {
            s.push_fixed(fixed_point(x)?);
        }
        Some(s)
    }

    /// Statistics of the given paired differences (the same as [`Self::from_values`]).
    pub fn from_differences(d: &[f64]) -> Option<Self> {
        Self::from_values(d)
    }

    /// Number of values (pairs, or sentences of a group).
    pub fn n(&self) -> u64 {
        self.n
    }

    /// The exact `ΣD` (scaled by 2^64).
    pub fn sum_exact(&self) -> i128 {
        self.sum
    }

    /// The exact `ΣD²` (scaled by 2^128).
    pub fn sum_sq_exact(&self) -> I256 {
        self.sum_sq
    }

    /// `Σd`, rounded to f64.
    pub fn sum(&self) -> f64 {
        self.sum as f64 * 2f64.powi(-(EXACT_SCALE_BITS as i32))
    }

    /// `Σd²`, rounded to f64.
    pub fn sum_sq(&self) -> f64 {
        u256_to_f64(self.sum_sq) * 2f64.powi(-2 * EXACT_SCALE_BITS as i32)
    }

    /// Mean `ΣD / n / 2^64` (NaN when `n == 0`).
    pub fn mean(&self) -> f64 {
        self.sum as f64 / self.n as f64 * 2f64.powi(-(EXACT_SCALE_BITS as i32))
    }

    /// Mean square `ΣD² / n / 2^128`: the scale a variance is judged against.
    pub fn mean_sq(&self) -> f64 {
        u256_to_f64(self.sum_sq) / self.n as f64 * 2f64.powi(-2 * EXACT_SCALE_BITS as i32)
    }

    /// Sample variance (`n − 1` denominator; NaN when `n < 2`):
    /// `(n·ΣD² − (ΣD)²) / (n(n − 1))`, written with `ΣD = q·n + r` (`0 ≤ r < n`) as
    /// `(M − r²/n) / (n − 1)` where `M = Σ(D − q)² = ΣD² − q·(ΣD + r)` is an exact integer; only
    /// `M`'s conversion and the last operations round, and `r²/n < n` is negligible unless the
    /// variance is zero at the fixed-point resolution.
    pub fn variance(&self) -> f64 {
        if self.n < 2 {
            return f64::NAN;
        }
        let (_, r, m) = self.centered();
        let n = self.n as f64;
        let scaled = (u256_to_f64(m) - (r * r) as f64 / n) / (n - 1.0);
        scaled.max(0.0) * 2f64.powi(-2 * EXACT_SCALE_BITS as i32)
    }

    /// `(q, r, M)` with `ΣD = q·n + r`, `0 ≤ r < n` and `M = ΣD² − q·(ΣD + r)`; `n > 0`.
    fn centered(&self) -> (i128, u128, I256) {
        let n = i128::from(self.n);
        let (q, r) = (self.sum.div_euclid(n), self.sum.rem_euclid(n));
        let m = self.sum_sq - I256::from(q) * (I256::from(self.sum) + I256::from(r));
        (q, r as u128, m)
    }
}

/// A non-negative 256-bit integer as the nearest f64 (ties to even), as Python's `float(int)`:
/// the top 128 bits with a sticky bit for everything below are converted by the hardware.
fn u256_to_f64(x: I256) -> f64 {
    let x = x.as_u256();
    let bits = 256 - x.leading_zeros();
    if bits <= 128 {
        return x.as_u128() as f64;
    }
    let shift = bits - 128;
    let sticky = u128::from((x & ((U256::ONE << shift) - U256::ONE)) != U256::ZERO);
    ((x >> shift).as_u128() | sticky) as f64 * 2f64.powi(shift as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u256_conversion_rounds_like_python_float() {
        // 2^200 + 2^147 is exactly halfway between two f64s: ties to even (down).
        let half = (I256::ONE << 200) + (I256::ONE << 147);
        assert_eq!(u256_to_f64(half), 2f64.powi(200));
        // A sticky bit far below breaks the tie upwards.
        assert_eq!(u256_to_f64(half + I256::ONE), 2f64.powi(200) + 2f64.powi(148));
        assert_eq!(u256_to_f64(I256::from(12345)), 12345.0);
    }
}
