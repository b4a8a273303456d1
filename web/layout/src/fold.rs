//! Folding matrix fan-outs: the tasks of one matrix job (the same job id) become one node
//! until the user expands it, so a 200-shard test job does not drown the picture.

use std::collections::HashMap;

/// A node of the folded graph: one task, or every task of a folded matrix job.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldedNode {
    /// Indices of the input tasks it stands for, in input order.
    pub members: Vec<usize>,
    /// The job id when the node is a folded group.
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fold {
    pub nodes: Vec<FoldedNode>,
    /// Deduplicated edges between folded nodes, without self-loops.
    pub edges: Vec<(usize, usize)>,
    /// The folded node of each input task.
    pub node_of: Vec<usize>,
}

/// Folds tasks that share a group key (the job id) when the group has at least
/// `min_size` members and `expanded` does not name it.
pub fn fold(
    groups: &[&str],
    edges: &[(usize, usize)],
    min_size: usize,
    expanded: impl Fn(&str) -> bool,
) -> Fold {
    let mut sizes: HashMap<&str, usize> = HashMap::new();
    for &g in groups {
        *sizes.entry(g).or_default() += 1;
    }
    let mut nodes: Vec<FoldedNode> = Vec::new();
    let mut node_of = Vec::with_capacity(groups.len());
    let mut group_node: HashMap<&str, usize> = HashMap::new();
    for (task, &g) in groups.iter().enumerate() {
        let folds = sizes[g] >= min_size.max(2) && !expanded(g);
        let node = if folds {
            *group_node.entry(g).or_insert_with(|| {
                nodes.push(FoldedNode {
                    members: Vec::new(),
                    group: Some(g.to_owned()),
                });
                nodes.len() - 1
            })
        } else {
            nodes.push(FoldedNode {
                members: Vec::new(),
                group: None,
            });
            nodes.len() - 1
        };
        nodes[node].members.push(task);
        node_of.push(node);
    }
    let mut folded: Vec<(usize, usize)> = edges
        .iter()
        .filter(|&&(a, b)| a < groups.len() && b < groups.len())
        .map(|&(a, b)| (node_of[a], node_of[b]))
        .filter(|(a, b)| a != b)
        .collect();
    folded.sort_unstable();
    folded.dedup();
    Fold {
        nodes,
        edges: folded,
        node_of,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matrix_folds_into_one_node_until_expanded() {
        // build → test ×3 → deploy
        let groups = ["build", "test", "test", "test", "deploy"];
        let edges = [(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)];
        let folded = fold(&groups, &edges, 2, |_| false);
        assert_eq!(folded.nodes.len(), 3);
        assert_eq!(folded.nodes[1].members, vec![1, 2, 3]);
        assert_eq!(folded.nodes[1].group.as_deref(), Some("test"));
        assert_eq!(folded.edges, vec![(0, 1), (1, 2)]);

        let open = fold(&groups, &edges, 2, |g| g == "test");
        assert_eq!(open.nodes.len(), 5);
        assert_eq!(open.edges.len(), 6);
    }
}
