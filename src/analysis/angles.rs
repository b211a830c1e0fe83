//! The angle between two hidden-state vectors, computed so that it stays accurate for the
//! nearly parallel vectors that consecutive transformer layers produce.
//!
//! The notebook computed `acos(v·u / (‖v‖‖u‖))` in float32. Near 0 (and 180) degrees `acos`
//! amplifies rounding error enormously: for an angle θ the cosine is `1 − θ²/2`, so in float32
//! any θ below about 3·10⁻⁴ rad collapses to exactly 0 and larger small angles are quantised,
//! and a cosine that rounds above 1 even gives NaN. We instead accumulate in f64 and use
//! Kahan's formula `2·atan2(‖â − b̂‖, ‖â + b̂‖)` with `â = a/‖a‖`, which is accurate to a few
//! ulps of the angle over the whole range 0..π.

use ndarray::ArrayView1;

use super::AnalysisError;

/// The unit in which angles are reported. Computation is always in radians.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum AngleUnit {
    /// Degrees, as the notebook reports them (0..=180).
    #[default]
    Degrees,
    /// Radians (0..=π).
    Radians,
}

impl AngleUnit {
    /// Converts an angle `r` in radians to this unit.
    pub fn from_radians(self, r: f64) -> f64 {
        match self {
            AngleUnit::Degrees => r.to_degrees(),
            AngleUnit::Radians => r,
        }
    }

    /// The unit's name as used in reports and plots: `"degrees"` or `"radians"`.
    pub fn label(self) -> &'static str {
        match self {
            AngleUnit::Degrees => "degrees",
            AngleUnit::Radians => "radians",
        }
    }
}

/// The angle in radians (in `0..=π`) between vectors `a` and `b`.
///
/// Accumulates in f64 and uses Kahan's stable form `2·atan2(‖â − b̂‖, ‖â + b̂‖)` where
/// `â = a/‖a‖`: it is symmetric, invariant to positive scaling, never NaN for finite nonzero
/// vectors, exactly `0` for identical vectors and exactly `π` for `b = −a`; for nearly parallel
/// vectors the relative error stays near f64 precision where `acos(cos)` returns garbage.
///
/// # Errors
/// * [`AnalysisError::LengthMismatch`] if the lengths differ;
/// * [`AnalysisError::NonFiniteVector`] if a component is NaN or infinite;
/// * [`AnalysisError::ZeroVector`] if either vector has zero norm (the direction, hence the
///   angle, is undefined) — this includes empty vectors.
pub fn angle_between(a: ArrayView1<f32>, b: ArrayView1<f32>) -> Result<f64, AnalysisError> {
    if a.len() != b.len() {
        return Err(AnalysisError::LengthMismatch { a: a.len(), b: b.len() });
    }
    let norm_a = norm(a)?;
    let norm_b = norm(b)?;
    let (mut diff_sq, mut sum_sq) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b.iter()) {
        let ua = f64::from(x) / norm_a;
        let ub = f64::from(y) / norm_b;
        let d = ua - ub;
        let s = ua + ub;
        diff_sq += d * d;
        sum_sq += s * s;
    }
    Ok(2.0 * diff_sq.sqrt().atan2(sum_sq.sqrt()))
}

/// Euclidean norm in f64; errors on non-finite components and on a zero norm.
fn norm(v: ArrayView1<f32>) -> Result<f64, AnalysisError> {
    let mut sq = 0.0f64;
    for &x in v.iter() {
        if !x.is_finite() {
            return Err(AnalysisError::NonFiniteVector);
        }
        let x = f64::from(x);
        sq += x * x;
    }
    // f32 components squared cannot overflow f64 for any realistic length; check anyway.
    if !sq.is_finite() {
        return Err(AnalysisError::NonFiniteVector);
    }
    if sq == 0.0 {
        return Err(AnalysisError::ZeroVector);
    }
    Ok(sq.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array1};
    use rand_chacha::rand_core::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use std::f64::consts::PI;

    const DIM: usize = 1600;

    fn random_vec(rng: &mut ChaCha20Rng, n: usize) -> Array1<f32> {
        // Uniform in [-1, 1): 24 random bits scaled by a power of two, exact in f32.
        Array1::from_iter((0..n).map(|_| (rng.next_u32() >> 8) as f32 / 8_388_608.0 - 1.0))
    }

    fn deg(a: &Array1<f32>, b: &Array1<f32>) -> f64 {
        AngleUnit::Degrees.from_radians(angle_between(a.view(), b.view()).unwrap())
    }

    #[test]
    fn unit_conversion_and_labels() {
        assert_eq!(AngleUnit::default(), AngleUnit::Degrees);
        assert_eq!(AngleUnit::Degrees.from_radians(PI), 180.0);
        assert_eq!(AngleUnit::Radians.from_radians(1.25), 1.25);
        assert_eq!(AngleUnit::Degrees.label(), "degrees");
        assert_eq!(AngleUnit::Radians.label(), "radians");
    }

    #[test]
    fn exact_on_constructed_vectors() {
        let mut rng = ChaCha20Rng::from_seed([7; 32]);
        let a = random_vec(&mut rng, DIM);
        // Identical vectors: exactly 0.
        assert_eq!(angle_between(a.view(), a.view()).unwrap(), 0.0);
        // Opposite vectors: exactly 180 degrees.
        let neg = a.mapv(|x| -x);
        assert_eq!(deg(&a, &neg), 180.0);
        // Orthogonal vectors with disjoint supports: exactly 90 degrees.
        let mut u = Array1::<f32>::zeros(DIM);
        let mut v = Array1::<f32>::zeros(DIM);
        for i in 0..DIM {
            if i % 2 == 0 {
                u[i] = a[i];
            } else {
                v[i] = a[i];
            }
        }
        assert_eq!(deg(&u, &v), 90.0);
        // Small hand example: 45 degrees.
        let x = array![1.0f32, 0.0];
        let y = array![1.0f32, 1.0];
        approx::assert_relative_eq!(deg(&x, &y), 45.0, max_relative = 1e-15);
    }

    #[test]
    fn symmetric_and_scale_invariant() {
        let mut rng = ChaCha20Rng::from_seed([8; 32]);
        for _ in 0..20 {
            let a = random_vec(&mut rng, DIM);
            let b = random_vec(&mut rng, DIM);
            let ab = angle_between(a.view(), b.view()).unwrap();
            let ba = angle_between(b.view(), a.view()).unwrap();
            assert_eq!(ab, ba);
            assert!((0.0..=PI).contains(&ab));
            // Power-of-two scaling is exact, so the angle is bit-identical.
            let a4 = a.mapv(|x| x * 4.0);
            assert_eq!(angle_between(a4.view(), b.view()).unwrap(), ab);
            // Other positive scalings agree up to the f32 rounding of the scaled components
            // (~6e-8 relative each).
            let a3 = a.mapv(|x| x * 3.7);
            let b9 = b.mapv(|x| x * 0.013);
            approx::assert_relative_eq!(angle_between(a3.view(), b9.view()).unwrap(), ab, max_relative = 1e-6);
            // The angle to a scaled copy of itself is exactly 0 for power-of-two scales.
            assert_eq!(angle_between(a.view(), a4.view()).unwrap(), 0.0);
        }
    }

    /// Nearly parallel 1600-dim vectors with an analytically known angle: `u ⊥ v`,
    /// `‖u‖ = ‖v‖`, `b = u + t·v` with `t = 2⁻ᵏ` (exact in f32), so the angle is exactly
    /// `atan(t)`. Float32 `acos(cos)` returns 0 for all of these.
    #[test]
    fn accurate_for_nearly_parallel_vectors() {
        let mut rng = ChaCha20Rng::from_seed([9; 32]);
        // u: random signs (±1); v: ±1 with exactly half of the products u_i v_i positive.
        let signs: Vec<f32> = (0..DIM).map(|_| if rng.next_u32() & 1 == 0 { 1.0 } else { -1.0 }).collect();
        let mut halves: Vec<f32> = (0..DIM).map(|i| if i < DIM / 2 { 1.0 } else { -1.0 }).collect();
        // Deterministic Fisher–Yates shuffle so the ±1 pattern is irregular.
        for i in (1..DIM).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            halves.swap(i, j);
        }
        let u = Array1::from_vec(signs.clone());
        let v = Array1::from_iter(signs.iter().zip(&halves).map(|(s, h)| s * h));
        assert_eq!(u.dot(&v), 0.0);
        for k in [1, 5, 10, 15, 20, 23] {
            let t = (2.0f64).powi(-k);
            let b = &u + &v.mapv(|x| x * t as f32);
            // Check that b is exactly u + t·v (no f32 rounding).
            for i in 0..DIM {
                assert_eq!(f64::from(b[i]), f64::from(u[i]) + t * f64::from(v[i]));
            }
            let expected = t.atan();
            let got = angle_between(u.view(), b.view()).unwrap();
            let rel = (got - expected).abs() / expected;
            assert!(rel < 1e-9, "k={k}: got {got:e}, expected {expected:e}, rel {rel:e}");

            if k >= 15 {
                // The notebook's float32 acos formula collapses to 0 (or NaN) here.
                let dot: f32 = u.dot(&b);
                let cos = dot / (u.dot(&u).sqrt() * b.dot(&b).sqrt());
                let naive = f64::from(cos.acos());
                assert!(naive.is_nan() || (naive - expected).abs() / expected > 0.1);
            }
        }
    }

    /// Random dense vectors with a tiny random perturbation, against a reference computed
    /// independently from the exact difference `d = b − a` (exact in f64 for nearby f32s):
    /// `θ = atan2(‖a‖·‖d⊥‖, ‖a‖² + a·d)` with `d⊥` the part of `d` orthogonal to `a`.
    #[test]
    fn accurate_against_independent_reference() {
        let mut rng = ChaCha20Rng::from_seed([10; 32]);
        for scale in [1e-2f32, 1e-4, 1e-6] {
            let a = random_vec(&mut rng, DIM);
            let noise = random_vec(&mut rng, DIM);
            let b = &a + &noise.mapv(|x| x * scale);
            let a64 = a.mapv(f64::from);
            let d = b.mapv(f64::from) - &a64;
            let aa = a64.dot(&a64);
            let ad = a64.dot(&d);
            let d_perp = &d - &a64.mapv(|x| x * ad / aa);
            let expected = (aa.sqrt() * d_perp.dot(&d_perp).sqrt()).atan2(aa + ad);
            let got = angle_between(a.view(), b.view()).unwrap();
            let rel = (got - expected).abs() / expected;
            assert!(rel < 1e-6, "scale {scale}: got {got:e}, expected {expected:e}");
        }
    }

    #[test]
    fn errors() {
        let z = Array1::<f32>::zeros(4);
        let a = array![1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(angle_between(z.view(), a.view()), Err(AnalysisError::ZeroVector));
        assert_eq!(angle_between(a.view(), z.view()), Err(AnalysisError::ZeroVector));
        let empty = Array1::<f32>::zeros(0);
        assert_eq!(angle_between(empty.view(), empty.view()), Err(AnalysisError::ZeroVector));
        let short = array![1.0f32];
        assert_eq!(angle_between(a.view(), short.view()), Err(AnalysisError::LengthMismatch { a: 4, b: 1 }));
        let nan = array![1.0f32, f32::NAN, 0.0, 0.0];
        assert_eq!(angle_between(nan.view(), a.view()), Err(AnalysisError::NonFiniteVector));
        let inf = array![1.0f32, f32::INFINITY, 0.0, 0.0];
        assert_eq!(angle_between(a.view(), inf.view()), Err(AnalysisError::NonFiniteVector));
        // Huge but finite f32 components do not overflow.
        let big = array![f32::MAX, f32::MAX, 0.0, 0.0];
        approx::assert_relative_eq!(
            angle_between(big.view(), a.view()).unwrap(),
            angle_between(array![1.0f32, 1.0, 0.0, 0.0].view(), a.view()).unwrap(),
            max_relative = 1e-12
        );
    }

    #[test]
    fn works_on_strided_views() {
        let m = ndarray::arr2(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]]);
        // Columns are non-contiguous views.
        let got = angle_between(m.column(0), m.column(1)).unwrap();
        approx::assert_relative_eq!(got, (1.0f64 / 2.0).acos(), max_relative = 1e-15);
    }
}
