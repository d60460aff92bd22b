//! Summaries of repeated measurements, and ratios taken pair by pair.
//!
//! Every figure is repeated; a summary is the median with the minimum and maximum (no means, no
//! standard deviations: three to five runs on a shared machine do not have a distribution worth
//! the name). A ratio between two paths is taken within each repetition first — both numbers
//! were measured minutes apart at most, under the same background load — and only then
//! summarised.

use serde::Serialize;

/// Median, minimum and maximum of a set of runs, and the runs in the order they were measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

/// Summarises `runs` (NaN and infinite values are left out); `None` when nothing is left.
pub fn summarize(runs: &[f64]) -> Option<Summary> {
    let kept: Vec<f64> = runs.iter().copied().filter(|v| v.is_finite()).collect();
    if kept.is_empty() {
        return None;
    }
    let mut sorted = kept.clone();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: sorted[0],
        max: sorted[n - 1],
        runs: kept,
    })
}

/// The `p`-th percentile (0..=100) of `values` by nearest rank; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p.clamp(0.0, 100.0) / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Ratios `a / b` of the repetitions both have (by repetition index); a repetition where either
/// is missing or `b` is zero gives no ratio.
pub fn pairwise_ratios(a: &[(usize, f64)], b: &[(usize, f64)]) -> Vec<f64> {
    a.iter()
        .filter_map(|(rep, x)| {
            let (_, y) = b.iter().find(|(r, _)| r == rep)?;
            (*y != 0.0 && x.is_finite() && y.is_finite()).then(|| x / y)
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(s.runs, vec![3.0, 1.0, 2.0], "runs keep measurement order");
        let s = summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[f64::NAN]).is_none());
        assert_eq!(summarize(&[f64::INFINITY, 5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn ratios_pair_repetitions() {
        let a = [(0, 10.0), (1, 20.0), (2, 30.0)];
        let b = [(0, 5.0), (2, 0.0), (3, 1.0)];
        // rep 1 has no partner, rep 2 divides by zero.
        assert_eq!(pairwise_ratios(&a, &b), vec![2.0]);
        let b = [(2, 10.0), (1, 10.0), (0, 10.0)];
        assert_eq!(pairwise_ratios(&a, &b), vec![1.0, 2.0, 3.0]);
    }
}
