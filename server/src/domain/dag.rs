//! Dependency-graph ordering for named nodes: topological order, cycle and
//! missing-dependency detection, and layering.
//!
//! This module owns only graph reasoning over `(name, needs)` pairs. It must
//! not know about pipeline files, YAML, positions or tasks; callers translate
//! its errors into their own vocabulary.
//!
//! Everything here is iterative so that graphs with thousands of nodes (and
//! long dependency chains) cannot exhaust the stack.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Why a set of nodes cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DagError {
    #[error("duplicate node `{0}`")]
    Duplicate(String),
    #[error("`{node}` needs `{need}`, which does not exist")]
    MissingNeed { node: String, need: String },
    /// The names along the cycle, with the first repeated at the end.
    #[error("cycle: {}", .0.join(" → "))]
    Cycle(Vec<String>),
}

/// Resolves each node's needs into indices, rejecting duplicates and dangling
/// names. Repeated needs are collapsed so in-degree counting stays exact.
fn resolve(nodes: &[(String, Vec<String>)]) -> Result<Vec<Vec<usize>>, DagError> {
    let mut index: HashMap<&str, usize> = HashMap::with_capacity(nodes.len());
    for (i, (name, _)) in nodes.iter().enumerate() {
        if index.insert(name.as_str(), i).is_some() {
            return Err(DagError::Duplicate(name.clone()));
        }
    }
    let mut needs = Vec::with_capacity(nodes.len());
    for (name, node_needs) in nodes {
        let mut resolved: Vec<usize> = Vec::with_capacity(node_needs.len());
        for need in node_needs {
            match index.get(need.as_str()) {
                Some(&j) => {
                    if !resolved.contains(&j) {
                        resolved.push(j);
                    }
                }
                None => {
                    return Err(DagError::MissingNeed {
                        node: name.clone(),
                        need: need.clone(),
                    });
                }
            }
        }
        needs.push(resolved);
    }
    Ok(needs)
}

/// Returns node indices so that every node comes after all of its needs.
///
/// Among nodes that are ready at the same time the one declared first wins,
/// which keeps the order stable and close to the order the author wrote.
pub fn topo_order(nodes: &[(String, Vec<String>)]) -> Result<Vec<usize>, DagError> {
    let needs = resolve(nodes)?;
    let n = nodes.len();
    let mut pending: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node_needs) in needs.iter().enumerate() {
        for &j in node_needs {
            dependents[j].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| pending[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push(Reverse(d));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    Err(DagError::Cycle(find_cycle(nodes, &needs, &pending)))
}

/// Walks "still pending need" edges from the first stuck node. Every stuck
/// node has at least one stuck need, so the walk must revisit a node, and the
/// revisited stretch is a cycle.
fn find_cycle(
    nodes: &[(String, Vec<String>)],
    needs: &[Vec<usize>],
    pending: &[usize],
) -> Vec<String> {
    let stuck = |i: usize| pending[i] > 0;
    let Some(start) = (0..nodes.len()).find(|&i| stuck(i)) else {
        return Vec::new();
    };
    let mut seen_at: HashMap<usize, usize> = HashMap::new();
    let mut path: Vec<usize> = Vec::new();
    let mut current = start;
    loop {
        if let Some(&pos) = seen_at.get(&current) {
            let mut cycle: Vec<usize> = path[pos..].to_vec();
            // Rotate to the earliest-declared node so the message is stable.
            if let Some(min_pos) = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, idx)| **idx)
                .map(|(p, _)| p)
            {
                cycle.rotate_left(min_pos);
            }
            let mut names: Vec<String> = cycle.iter().map(|&i| nodes[i].0.clone()).collect();
            if let Some(first) = names.first().cloned() {
                names.push(first);
            }
            return names;
        }
        seen_at.insert(current, path.len());
        path.push(current);
        match needs[current].iter().copied().find(|&j| stuck(j)) {
            Some(next) => current = next,
            // Unreachable when `pending` came from a failed Kahn pass; return
            // the partial path rather than panic.
            None => return path.iter().map(|&i| nodes[i].0.clone()).collect(),
        }
    }
}

/// Layer index per node: 0 for nodes without needs, otherwise one more than
/// the deepest need. Useful for display and for estimating critical paths.
pub fn longest_path_layers(nodes: &[(String, Vec<String>)]) -> Result<Vec<usize>, DagError> {
    let order = topo_order(nodes)?;
    let needs = resolve(nodes)?;
    let mut layer = vec![0usize; nodes.len()];
    for i in order {
        layer[i] = needs[i].iter().map(|&j| layer[j] + 1).max().unwrap_or(0);
    }
    Ok(layer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        spec.iter()
            .map(|(n, needs)| (n.to_string(), needs.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn orders_diamond_in_declaration_order() {
        let g = graph(&[("d", &["b", "c"]), ("b", &["a"]), ("c", &["a"]), ("a", &[])]);
        assert_eq!(topo_order(&g).unwrap(), vec![3, 1, 2, 0]);
        assert_eq!(longest_path_layers(&g).unwrap(), vec![2, 1, 1, 0]);
    }

    #[test]
    fn reports_cycle_spelled_out() {
        let g = graph(&[("x", &[]), ("a", &["c"]), ("b", &["a"]), ("c", &["b"])]);
        let err = topo_order(&g).unwrap_err();
        assert_eq!(err.to_string(), "cycle: a → c → b → a");
    }

    #[test]
    fn reports_self_cycle() {
        let g = graph(&[("a", &["a"])]);
        assert_eq!(topo_order(&g).unwrap_err().to_string(), "cycle: a → a");
    }

    #[test]
    fn reports_missing_and_duplicate() {
        let g = graph(&[("a", &["zz"])]);
        assert_eq!(
            topo_order(&g).unwrap_err(),
            DagError::MissingNeed {
                node: "a".into(),
                need: "zz".into()
            }
        );
        let g = graph(&[("a", &[]), ("a", &[])]);
        assert_eq!(topo_order(&g).unwrap_err(), DagError::Duplicate("a".into()));
    }

    #[test]
    fn long_chain_of_five_thousand_is_fine() {
        let n = 5000;
        let g: Vec<(String, Vec<String>)> = (0..n)
            .map(|i| {
                let needs = if i + 1 < n {
                    vec![format!("n{}", i + 1)]
                } else {
                    vec![]
                };
                (format!("n{i}"), needs)
            })
            .collect();
        let order = topo_order(&g).unwrap();
        assert_eq!(order.first(), Some(&(n - 1)));
        assert_eq!(longest_path_layers(&g).unwrap()[0], n - 1);
        // Closing the chain into a ring must still be found without recursion.
        let mut ring = g.clone();
        ring[n - 1].1.push("n0".into());
        match topo_order(&ring).unwrap_err() {
            DagError::Cycle(names) => assert_eq!(names.len(), n + 1),
            other => panic!("unexpected {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn random_dags_respect_edges(
            n in 1usize..60,
            edges in proptest::collection::vec((0usize..60, 0usize..60), 0..200),
        ) {
            // Only edges from higher to lower index keep the graph acyclic.
            let mut g: Vec<(String, Vec<String>)> =
                (0..n).map(|i| (format!("j{i}"), Vec::new())).collect();
            for (a, b) in edges {
                let (a, b) = (a % n, b % n);
                if a > b {
                    g[a].1.push(format!("j{b}"));
                }
            }
            // Shuffle declaration order deterministically to avoid trivial input.
            g.reverse();
            let order = topo_order(&g).unwrap();
            prop_assert_eq!(order.len(), n);
            let mut pos = vec![0usize; n];
            for (p, &i) in order.iter().enumerate() {
                pos[i] = p;
            }
            let index: HashMap<&str, usize> =
                g.iter().enumerate().map(|(i, (name, _))| (name.as_str(), i)).collect();
            for (i, (_, needs)) in g.iter().enumerate() {
                for need in needs {
                    prop_assert!(pos[index[need.as_str()]] < pos[i]);
                }
            }
        }
    }
}
