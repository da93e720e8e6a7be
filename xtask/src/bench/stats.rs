//! Order statistics of measured samples.

use std::time::Duration;

/// The `q`-quantile (0.0..=1.0) of `samples` by the nearest-rank method;
/// `None` for no samples. NaNs sort last.
#[must_use]
pub fn quantile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let q = q.clamp(0.0, 1.0);
    // Nearest rank: the smallest value with at least q of the samples at or
    // below it.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_sign_loss,
        reason = "sample counts are far below 2^52; the rank is non-negative"
    )]
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median (the lower middle value for an even count).
#[must_use]
pub fn median(samples: &[f64]) -> Option<f64> {
    quantile(samples, 0.5)
}

/// Durations as microseconds.
#[must_use]
pub fn micros(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(|d| d.as_secs_f64() * 1e6).collect()
}

/// Durations as milliseconds.
#[must_use]
#[cfg_attr(
    not(test),
    allow(
        dead_code,
        reason = "used by the control-plane benchmark, built into the example and the tests"
    )
)]
pub fn millis(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&s, 0.5), Some(50.0));
        assert_eq!(quantile(&s, 0.99), Some(99.0));
        assert_eq!(quantile(&s, 1.0), Some(100.0));
        assert_eq!(quantile(&s, 0.0), Some(1.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn duration_units() {
        let d = [Duration::from_micros(1500)];
        assert!((micros(&d)[0] - 1500.0).abs() < 1e-9);
        assert!((millis(&d)[0] - 1.5).abs() < 1e-12);
    }
}
