//! Scenario splits: deterministic for a seed, disjoint old/new-only parts that cover the set,
//! the requested shares, and rejection of impossible configurations.

use bcl::data::{Scenario, Split, SplitConfig};
use proptest::prelude::*;

fn labels(classes: usize, per_class: usize) -> Vec<i64> {
    (0..classes * per_class)
        .map(|i| (i % classes) as i64)
        .collect()
}

#[test]
fn extended_data_takes_the_fraction_of_each_class() {
    let y = labels(10, 100);
    let s = Split::new(&SplitConfig::default(), &y, 10).unwrap();
    for c in 0..10 {
        assert_eq!(s.old_indices.iter().filter(|&&i| y[i] == c).count(), 30);
    }
    assert_eq!(s.new_indices.len(), 1000);
    assert_eq!(s.old_classes, (0..10).collect::<Vec<_>>());
}

#[test]
fn extended_class_takes_whole_classes() {
    let y = labels(10, 20);
    let cfg = SplitConfig {
        scenario: Scenario::ExtendedClass,
        fraction: 0.3,
        seed: 4,
    };
    let s = Split::new(&cfg, &y, 10).unwrap();
    assert_eq!(s.old_classes.len(), 3);
    assert_eq!(s.old_indices.len(), 60);
    assert!(s.old_indices.iter().all(|&i| s.old_classes.contains(&y[i])));
    assert_eq!(s.new_indices.len(), 200);
}

#[test]
fn open_scenarios_train_the_new_model_on_the_complement() {
    let y = labels(10, 20);
    for scenario in [Scenario::OpenData, Scenario::OpenClass] {
        let s = Split::new(
            &SplitConfig {
                scenario,
                fraction: 0.3,
                seed: 1,
            },
            &y,
            10,
        )
        .unwrap();
        assert_eq!(s.new_indices, s.new_only_indices());
    }
}

#[test]
fn invalid_fraction_is_rejected() {
    let y = labels(2, 5);
    for f in [0.0, 1.0, -0.5, f64::NAN] {
        let e = Split::new(
            &SplitConfig {
                fraction: f,
                ..Default::default()
            },
            &y,
            2,
        )
        .unwrap_err();
        assert!(e.to_string().contains("fraction"), "{e}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn splits_are_deterministic_disjoint_and_cover(
        seed in 0u64..1000, fraction in 0.05f64..0.95, classes in 2usize..12, per_class in 1usize..30,
        class_scenario in any::<bool>()
    ) {
        let y = labels(classes, per_class);
        let scenario = if class_scenario { Scenario::ExtendedClass } else { Scenario::ExtendedData };
        let cfg = SplitConfig { scenario, fraction, seed };
        let a = Split::new(&cfg, &y, classes).unwrap();
        let b = Split::new(&cfg, &y, classes).unwrap();
        prop_assert_eq!(&a, &b);
        let rest = a.new_only_indices();
        let mut all: Vec<usize> = a.old_indices.iter().chain(&rest).copied().collect();
        all.sort_unstable();
        prop_assert_eq!(all, (0..y.len()).collect::<Vec<_>>());
        prop_assert!(!a.old_indices.is_empty());
        if class_scenario {
            prop_assert!(!rest.is_empty());
        }
        // another seed gives another split (or the same when there is no choice to make)
        let c = Split::new(&SplitConfig { seed: seed + 1, ..cfg.clone() }, &y, classes).unwrap();
        prop_assert!(c.fingerprint != a.fingerprint || c.old_indices == a.old_indices);
    }
}
