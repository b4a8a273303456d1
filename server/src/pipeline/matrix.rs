//! Matrix expansion: from a [`MatrixSpec`] to the list of concrete
//! combinations, one per task.
//!
//! This module owns combination semantics and the size guard. It must not
//! know about YAML positions, expressions or job wiring; callers attach
//! positions to its error messages.
//!
//! Semantics (GitHub's, slightly simplified):
//! 1. Cartesian product of the axes, axes in file order, values in order.
//!    A matrix with no axes has no product (not one empty combination).
//! 2. `exclude` removes every combination that matches all keys given in an
//!    exclude entry.
//! 3. Each `include` entry is compared with every remaining product
//!    combination on the original axis keys the entry mentions. If none of
//!    those conflict, the entry's other keys are added to that combination
//!    (overwriting keys added by earlier includes, never axis values). An
//!    entry that matches no combination is appended as a new combination.
//!    Entries only ever match product combinations, not ones appended by
//!    other includes; identical appended entries collapse into one.
//!
//! Values compare by their text form, so `2` and `"2"` are the same value.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::pipeline::MAX_MATRIX_JOBS;
use crate::pipeline::model::MatrixSpec;

/// One concrete assignment of matrix keys to values.
pub type Combination = BTreeMap<String, Value>;

/// The product is refused before materialising it past this size, even if
/// excludes might shrink it, so a hostile file cannot allocate unboundedly.
const MAX_PRODUCT: usize = MAX_MATRIX_JOBS * 64;

/// Text form used for names, variables and comparisons.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n
            .as_f64()
            .map_or_else(|| n.to_string(), crate::pipeline::expr::format_number),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `k=v, k2=v2` with keys in sorted order.
pub fn combination_label(c: &Combination) -> String {
    c.iter()
        .map(|(k, v)| format!("{k}={}", value_text(v)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn same(a: &Value, b: &Value) -> bool {
    value_text(a) == value_text(b)
}

/// Expands the matrix; the error is a complete message for the user.
pub fn expand(spec: &MatrixSpec) -> Result<Vec<Combination>, String> {
    let product_len = if spec.axes.is_empty() {
        0
    } else {
        spec.axes
            .iter()
            .try_fold(1usize, |acc, a| acc.checked_mul(a.values.len()))
            .unwrap_or(usize::MAX)
    };
    if product_len > MAX_PRODUCT {
        return Err(format!(
            "matrix has {} combinations before `exclude`; at most {MAX_MATRIX_JOBS} jobs are allowed",
            if product_len == usize::MAX {
                "too many".to_string()
            } else {
                product_len.to_string()
            }
        ));
    }
    let mut product: Vec<Combination> = if spec.axes.is_empty() {
        Vec::new()
    } else {
        vec![Combination::new()]
    };
    for axis in &spec.axes {
        let mut next = Vec::with_capacity(product.len() * axis.values.len());
        for combo in &product {
            for value in &axis.values {
                let mut c = combo.clone();
                c.insert(axis.name.clone(), value.clone());
                next.push(c);
            }
        }
        product = next;
    }
    product.retain(|combo| {
        !spec.exclude.iter().any(|ex| {
            ex.iter()
                .all(|(k, v)| combo.get(k).is_some_and(|cv| same(cv, v)))
        })
    });
    let is_axis = |k: &str| spec.axes.iter().any(|a| a.name == k);
    let mut appended: Vec<Combination> = Vec::new();
    for inc in &spec.include {
        let mut matched = false;
        for combo in product.iter_mut() {
            let compatible = inc
                .iter()
                .filter(|(k, _)| is_axis(k))
                .all(|(k, v)| combo.get(k).is_some_and(|cv| same(cv, v)));
            if compatible {
                matched = true;
                for (k, v) in inc.iter().filter(|(k, _)| !is_axis(k)) {
                    combo.insert(k.clone(), v.clone());
                }
            }
        }
        let label = combination_label(inc);
        if !matched && !appended.iter().any(|a| combination_label(a) == label) {
            appended.push(inc.clone());
        }
    }
    product.extend(appended);
    if product.is_empty() {
        return Err("matrix produces no jobs".into());
    }
    if product.len() > MAX_MATRIX_JOBS {
        return Err(format!(
            "matrix expands to {} jobs, more than the limit of {MAX_MATRIX_JOBS}",
            product.len()
        ));
    }
    Ok(product)
}

/// Every key a task of this matrix may have, for validating `matrix.<key>`.
pub fn all_keys(spec: &MatrixSpec) -> std::collections::BTreeSet<String> {
    spec.axes
        .iter()
        .map(|a| a.name.clone())
        .chain(spec.include.iter().flat_map(|i| i.keys().cloned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::model::MatrixAxis;
    use serde_json::json;

    fn spec(axes: &[(&str, Vec<Value>)], include: Vec<Value>, exclude: Vec<Value>) -> MatrixSpec {
        let to_map = |v: Value| -> Combination {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        MatrixSpec {
            axes: axes
                .iter()
                .map(|(n, v)| MatrixAxis {
                    name: n.to_string(),
                    values: v.clone(),
                })
                .collect(),
            include: include.into_iter().map(to_map).collect(),
            exclude: exclude.into_iter().map(to_map).collect(),
            fail_fast: true,
            max_parallel: None,
        }
    }

    fn labels(c: &[Combination]) -> Vec<String> {
        c.iter().map(combination_label).collect()
    }

    #[test]
    fn product_in_axis_order() {
        let s = spec(
            &[
                ("os", vec![json!("linux"), json!("mac")]),
                ("v", vec![json!(1), json!(2)]),
            ],
            vec![],
            vec![],
        );
        assert_eq!(
            labels(&expand(&s).unwrap()),
            [
                "os=linux, v=1",
                "os=linux, v=2",
                "os=mac, v=1",
                "os=mac, v=2"
            ]
        );
    }

    #[test]
    fn exclude_then_include_extend_and_append() {
        let s = spec(
            &[
                ("os", vec![json!("linux"), json!("mac")]),
                ("v", vec![json!(1), json!(2)]),
            ],
            vec![
                json!({"os": "mac", "arch": "arm"}),
                json!({"extra": true}),
                json!({"os": "win", "v": 1}),
                json!({"os": "win", "v": 1}),
            ],
            vec![json!({"os": "mac", "v": "2"})],
        );
        assert_eq!(
            labels(&expand(&s).unwrap()),
            [
                "extra=true, os=linux, v=1",
                "extra=true, os=linux, v=2",
                "arch=arm, extra=true, os=mac, v=1",
                "os=win, v=1",
            ]
        );
    }

    #[test]
    fn include_only_and_empty() {
        let s = spec(&[], vec![json!({"a": 1}), json!({"a": 2})], vec![]);
        assert_eq!(labels(&expand(&s).unwrap()), ["a=1", "a=2"]);
        let s = spec(&[("a", vec![json!(1)])], vec![], vec![json!({"a": 1})]);
        assert!(expand(&s).unwrap_err().contains("no jobs"));
    }

    #[test]
    fn size_limits() {
        let values: Vec<Value> = (0..257).map(|i| json!(i)).collect();
        let s = spec(&[("n", values)], vec![], vec![]);
        assert!(expand(&s).unwrap_err().contains("257 jobs"));
        let ten: Vec<Value> = (0..10).map(|i| json!(i)).collect();
        let axes: Vec<(&str, Vec<Value>)> = [
            "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q",
            "r", "s", "t", "u",
        ]
        .iter()
        .map(|n| (*n, ten.clone()))
        .collect();
        assert!(
            expand(&spec(&axes, vec![], vec![]))
                .unwrap_err()
                .contains("before `exclude`")
        );
    }
}
