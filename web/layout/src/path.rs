//! The critical path: the chain of dependent tasks whose durations add up to the longest
//! time, which is what bounds the run's wall-clock time.

/// The nodes of the longest chain by total duration, from root to end, over `edges` as
/// `(upstream, downstream)`. Empty when there are no nodes. Edges against a topological
/// order (a cycle) are ignored.
pub fn critical_path(node_count: usize, edges: &[(usize, usize)], durations: &[u64]) -> Vec<usize> {
    if node_count == 0 {
        return Vec::new();
    }
    let duration = |v: usize| durations.get(v).copied().unwrap_or(0);
    let mut indegree = vec![0u32; node_count];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); node_count];
    for &(a, b) in edges {
        if a < node_count && b < node_count && a != b {
            succ[a].push(b);
            indegree[b] += 1;
        }
    }
    // finish[v]: the longest total duration of a chain that ends with v.
    let mut finish: Vec<u64> = (0..node_count).map(duration).collect();
    let mut via: Vec<Option<usize>> = vec![None; node_count];
    let mut stack: Vec<usize> = (0..node_count).filter(|&v| indegree[v] == 0).collect();
    while let Some(v) = stack.pop() {
        for &w in &succ[v] {
            let candidate = finish[v] + duration(w);
            if candidate > finish[w] || via[w].is_none() && candidate == finish[w] {
                finish[w] = candidate;
                via[w] = Some(v);
            }
            indegree[w] -= 1;
            if indegree[w] == 0 {
                stack.push(w);
            }
        }
    }
    let Some(end) = (0..node_count).max_by_key(|&v| (finish[v], std::cmp::Reverse(v))) else {
        return Vec::new();
    };
    let mut path = vec![end];
    let mut v = end;
    while let Some(u) = via[v] {
        path.push(u);
        v = u;
        if path.len() > node_count {
            break;
        }
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_chain_wins_not_the_longest_one() {
        // 0 → 1 → 2 → 3 takes 4 s; 0 → 4 → 3 takes 12 s through the slow task 4.
        let edges = [(0, 1), (1, 2), (2, 3), (0, 4), (4, 3)];
        let durations = [1, 1, 1, 1, 10];
        assert_eq!(critical_path(5, &edges, &durations), vec![0, 4, 3]);
    }

    #[test]
    fn a_single_node_is_its_own_path() {
        assert_eq!(critical_path(1, &[], &[5]), vec![0]);
        assert!(critical_path(0, &[], &[]).is_empty());
    }
}
