//! Geometry of a run's DAG for the dashboard: where each task goes, how edges bend, which
//! tasks form the critical path, and how matrix fan-outs fold into one node.
//!
//! It is a crate of its own, with no web dependencies, so the layout is unit-tested and
//! benchmarked on the host (`cargo bench -p gantry-layout`) and the WASM app only draws.
//! It must stay free of I/O and of anything that knows about GraphQL or the DOM.
//!
//! The layout is the classic layered (Sugiyama) pipeline, drawn left to right:
//! 1. **layering** by longest path from the roots, so every edge points to a later column;
//! 2. **dummy nodes** on edges that span several columns, so long edges reserve room and
//!    take part in crossing reduction;
//! 3. **crossing reduction** by barycenter sweeps, keeping the order with the fewest
//!    crossings (counted exactly with a Fenwick tree);
//! 4. **coordinates**: each node pulled toward its neighbours, order and gaps preserved;
//! 5. **edges** as polylines through their dummy nodes, which the UI draws as splines.

mod fold;
mod path;

pub use fold::{Fold, FoldedNode, fold};
pub use path::critical_path;

/// Sizes and gaps, in the drawing's units (CSS pixels in the dashboard).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub node_width: f32,
    pub node_height: f32,
    /// Horizontal space between two columns, where edges bend.
    pub layer_gap: f32,
    /// Vertical space between two nodes of a column.
    pub node_gap: f32,
    /// Vertical room one long edge takes where it passes a column.
    pub edge_gap: f32,
    /// Barycenter sweeps (each one down and up) of crossing reduction.
    pub sweeps: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            node_width: 180.0,
            node_height: 36.0,
            layer_gap: 60.0,
            node_gap: 14.0,
            edge_gap: 8.0,
            sweeps: 6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

/// One drawn edge: from the right side of `from` to the left side of `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgePath {
    pub from: usize,
    pub to: usize,
    /// At least two points; the inner ones are where the edge passes other columns.
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Layout {
    /// Top-left corner of each node, indexed like the input.
    pub nodes: Vec<Point>,
    /// The column of each node (0 for roots).
    pub layers: Vec<u32>,
    pub edges: Vec<EdgePath>,
    /// Edge crossings left after crossing reduction.
    pub crossings: u64,
    pub width: f32,
    pub height: f32,
}

/// Lays out `node_count` nodes with `edges` as `(upstream, downstream)` pairs.
///
/// Edges that close a cycle (a valid pipeline has none) and self-loops are drawn straight
/// and ignored by layering, so a bad input still gives a picture instead of a hang.
pub fn layout(node_count: usize, edges: &[(usize, usize)], options: &Options) -> Layout {
    if node_count == 0 {
        return Layout::default();
    }
    let edges: Vec<(usize, usize)> = edges
        .iter()
        .copied()
        .filter(|&(a, b)| a < node_count && b < node_count)
        .collect();
    let layers = longest_path_layers(node_count, &edges);
    let mut graph = LayeredGraph::new(node_count, &edges, &layers, options);
    graph.reduce_crossings(options.sweeps);
    let crossings = graph.crossings();
    graph.assign_coordinates(options);
    graph.into_layout(&edges, layers, crossings, options)
}

/// Longest path from the roots, over the edges that follow a topological order (Kahn's
/// algorithm); nodes left on a cycle take one column past their placed predecessors.
fn longest_path_layers(n: usize, edges: &[(usize, usize)]) -> Vec<u32> {
    let mut indegree = vec![0u32; n];
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        if a != b {
            succ[a].push(b);
            indegree[b] += 1;
        }
    }
    let mut layer = vec![0u32; n];
    let mut stack: Vec<usize> = (0..n).filter(|&v| indegree[v] == 0).rev().collect();
    let mut placed = vec![false; n];
    let mut remaining = n;
    loop {
        while let Some(v) = stack.pop() {
            placed[v] = true;
            remaining -= 1;
            for &w in &succ[v] {
                if placed[w] || indegree[w] == 0 {
                    // An edge back into a placed or released node closes a cycle.
                    continue;
                }
                layer[w] = layer[w].max(layer[v] + 1);
                indegree[w] -= 1;
                if indegree[w] == 0 {
                    stack.push(w);
                }
            }
        }
        if remaining == 0 {
            break;
        }
        // A cycle: release its first node as if its unplaced predecessors were gone.
        let Some(v) = (0..n).find(|&v| !placed[v]) else {
            break;
        };
        indegree[v] = 0;
        stack.push(v);
    }
    layer
}

/// The graph with dummy nodes, every edge between adjacent columns.
struct LayeredGraph {
    /// Column of every node, real ones first (`0..real`), then dummies.
    layer_of: Vec<u32>,
    real: usize,
    up: Vec<Vec<usize>>,
    down: Vec<Vec<usize>>,
    /// Nodes of each column in drawing order (top to bottom).
    order: Vec<Vec<usize>>,
    /// Index of each node within its column.
    pos: Vec<usize>,
    /// Vertical position (top) of each node, filled by `assign_coordinates`.
    y: Vec<f32>,
    /// For each input edge that spans columns, its chain of dummies.
    chains: Vec<Vec<usize>>,
}

impl LayeredGraph {
    fn new(n: usize, edges: &[(usize, usize)], layers: &[u32], _options: &Options) -> Self {
        let mut layer_of = layers.to_vec();
        let mut up: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut down: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut chains = Vec::with_capacity(edges.len());
        for &(a, b) in edges {
            let (la, lb) = (layer_of[a], layer_of[b]);
            let mut chain = Vec::new();
            if lb <= la {
                chains.push(chain);
                continue;
            }
            let mut prev = a;
            for l in la + 1..lb {
                let d = layer_of.len();
                layer_of.push(l);
                up.push(vec![prev]);
                down.push(Vec::new());
                down[prev].push(d);
                chain.push(d);
                prev = d;
            }
            down[prev].push(b);
            up[b].push(prev);
            chains.push(chain);
        }
        let layer_count = layer_of.iter().copied().max().unwrap_or(0) as usize + 1;
        let mut order: Vec<Vec<usize>> = vec![Vec::new(); layer_count];
        // Initial order: a depth-first walk from the roots keeps siblings together.
        let total = layer_of.len();
        let mut seen = vec![false; total];
        let mut stack = Vec::new();
        for root in 0..total {
            if seen[root] || !up[root].is_empty() {
                continue;
            }
            stack.push(root);
            while let Some(v) = stack.pop() {
                if seen[v] {
                    continue;
                }
                seen[v] = true;
                order[layer_of[v] as usize].push(v);
                for &w in down[v].iter().rev() {
                    if !seen[w] {
                        stack.push(w);
                    }
                }
            }
        }
        for v in 0..total {
            if !seen[v] {
                order[layer_of[v] as usize].push(v);
            }
        }
        let mut pos = vec![0; total];
        for column in &order {
            for (i, &v) in column.iter().enumerate() {
                pos[v] = i;
            }
        }
        Self {
            layer_of,
            real: n,
            up,
            down,
            order,
            pos,
            y: vec![0.0; total],
            chains,
        }
    }

    fn reduce_crossings(&mut self, sweeps: usize) {
        let mut best = self.order.clone();
        let mut best_crossings = self.crossings();
        for _ in 0..sweeps {
            if best_crossings == 0 {
                break;
            }
            for l in 1..self.order.len() {
                self.sort_by_barycenter(l, true);
            }
            for l in (0..self.order.len().saturating_sub(1)).rev() {
                self.sort_by_barycenter(l, false);
            }
            let crossings = self.crossings();
            if crossings < best_crossings {
                best_crossings = crossings;
                best.clone_from(&self.order);
            } else {
                // No progress: further sweeps would only oscillate.
                break;
            }
        }
        self.order = best;
        for column in &self.order {
            for (i, &v) in column.iter().enumerate() {
                self.pos[v] = i;
            }
        }
    }

    /// Sorts column `l` by the mean position of each node's neighbours in the previous
    /// (`from_above`) or next column; a node without such neighbours keeps its place.
    fn sort_by_barycenter(&mut self, l: usize, from_above: bool) {
        let mut keyed: Vec<(f32, usize)> = self.order[l]
            .iter()
            .map(|&v| {
                let neighbours = if from_above {
                    &self.up[v]
                } else {
                    &self.down[v]
                };
                let key = if neighbours.is_empty() {
                    self.pos[v] as f32
                } else {
                    neighbours.iter().map(|&u| self.pos[u] as f32).sum::<f32>()
                        / neighbours.len() as f32
                };
                (key, v)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (i, &(_, v)) in keyed.iter().enumerate() {
            self.order[l][i] = v;
            self.pos[v] = i;
        }
    }

    /// Crossings between every pair of adjacent columns (Barth, Jünger and Mutzel:
    /// sort the edges by upper end, count inversions of the lower ends).
    fn crossings(&self) -> u64 {
        let mut total = 0u64;
        let mut ends: Vec<(usize, usize)> = Vec::new();
        for l in 0..self.order.len().saturating_sub(1) {
            let lower_len = self.order[l + 1].len();
            ends.clear();
            for &v in &self.order[l] {
                for &w in &self.down[v] {
                    ends.push((self.pos[v], self.pos[w]));
                }
            }
            ends.sort_unstable();
            let mut tree = vec![0u32; lower_len + 1];
            for (seen, &(_, lower)) in ends.iter().enumerate() {
                // Edges seen so far whose lower end lies strictly below this one cross it.
                let mut not_greater = 0u32;
                let mut i = lower + 1;
                while i > 0 {
                    not_greater += tree[i];
                    i &= i - 1;
                }
                total += seen as u64 - u64::from(not_greater);
                let mut i = lower + 1;
                while i <= lower_len {
                    tree[i] += 1;
                    i += i & i.wrapping_neg();
                }
            }
        }
        total
    }

    fn extent(&self, v: usize, options: &Options) -> f32 {
        if v < self.real {
            options.node_height
        } else {
            0.0
        }
    }

    fn gap(&self, a: usize, b: usize, options: &Options) -> f32 {
        if a < self.real && b < self.real {
            options.node_gap
        } else {
            options.edge_gap
        }
    }

    /// Places each column top to bottom in its order, then pulls every node toward the
    /// centre of its neighbours in sweeps, never reordering or overlapping.
    fn assign_coordinates(&mut self, options: &Options) {
        for l in 0..self.order.len() {
            let mut y = 0.0;
            for i in 0..self.order[l].len() {
                let v = self.order[l][i];
                if i > 0 {
                    y += self.gap(self.order[l][i - 1], v, options);
                }
                self.y[v] = y;
                y += self.extent(v, options);
            }
        }
        // Centre the columns on the tallest one so the first sweep starts balanced.
        let heights: Vec<f32> = self
            .order
            .iter()
            .map(|c| {
                c.last()
                    .map_or(0.0, |&v| self.y[v] + self.extent(v, options))
            })
            .collect();
        let tallest = heights.iter().copied().fold(0.0, f32::max);
        for (l, column) in self.order.iter().enumerate() {
            let shift = (tallest - heights[l]) / 2.0;
            for &v in column {
                self.y[v] += shift;
            }
        }
        for _ in 0..4 {
            for l in 1..self.order.len() {
                self.align_column(l, true, options);
            }
            for l in (0..self.order.len().saturating_sub(1)).rev() {
                self.align_column(l, false, options);
            }
        }
        let top = self.y.iter().copied().fold(f32::INFINITY, f32::min);
        if top.is_finite() {
            for y in &mut self.y {
                *y -= top;
            }
        }
    }

    fn align_column(&mut self, l: usize, from_above: bool, options: &Options) {
        let column = &self.order[l];
        let len = column.len();
        if len == 0 {
            return;
        }
        let desired: Vec<f32> = column
            .iter()
            .map(|&v| {
                let neighbours = if from_above {
                    &self.up[v]
                } else {
                    &self.down[v]
                };
                let half = self.extent(v, options) / 2.0;
                if neighbours.is_empty() {
                    self.y[v]
                } else {
                    let centre = neighbours
                        .iter()
                        .map(|&u| self.y[u] + self.extent(u, options) / 2.0)
                        .sum::<f32>()
                        / neighbours.len() as f32;
                    centre - half
                }
            })
            .collect();
        // Two feasible placements, pushed down and pushed up; their mean is feasible too
        // (the order constraints are linear) and does not drift either way.
        let mut down = vec![0.0f32; len];
        for i in 0..len {
            down[i] = if i == 0 {
                desired[0]
            } else {
                let (a, b) = (column[i - 1], column[i]);
                desired[i].max(down[i - 1] + self.extent(a, options) + self.gap(a, b, options))
            };
        }
        let mut up = vec![0.0f32; len];
        for i in (0..len).rev() {
            up[i] = if i == len - 1 {
                desired[i]
            } else {
                let (a, b) = (column[i], column[i + 1]);
                desired[i].min(up[i + 1] - self.extent(a, options) - self.gap(a, b, options))
            };
        }
        for i in 0..len {
            self.y[column[i]] = (down[i] + up[i]) / 2.0;
        }
    }

    fn into_layout(
        self,
        edges: &[(usize, usize)],
        layers: Vec<u32>,
        crossings: u64,
        options: &Options,
    ) -> Layout {
        let column_x = |l: u32| l as f32 * (options.node_width + options.layer_gap);
        let nodes: Vec<Point> = (0..self.real)
            .map(|v| Point {
                x: column_x(self.layer_of[v]),
                y: self.y[v],
            })
            .collect();
        let half = options.node_height / 2.0;
        let paths = edges
            .iter()
            .zip(&self.chains)
            .map(|(&(from, to), chain)| {
                let mut points = Vec::with_capacity(chain.len() + 2);
                points.push(Point {
                    x: nodes[from].x + options.node_width,
                    y: nodes[from].y + half,
                });
                for &d in chain {
                    let x = column_x(self.layer_of[d]);
                    // Straight through the column, so the edge never cuts a node there.
                    points.push(Point { x, y: self.y[d] });
                    points.push(Point {
                        x: x + options.node_width,
                        y: self.y[d],
                    });
                }
                points.push(Point {
                    x: nodes[to].x,
                    y: nodes[to].y + half,
                });
                EdgePath { from, to, points }
            })
            .collect();
        let layer_count = self.order.len() as f32;
        let width = layer_count * options.node_width + (layer_count - 1.0) * options.layer_gap;
        let height = (0..self.layer_of.len())
            .map(|v| self.y[v] + self.extent(v, options))
            .fold(0.0, f32::max);
        Layout {
            nodes,
            layers,
            edges: paths,
            crossings,
            width,
            height,
        }
    }
}

/// A CI-shaped DAG for tests and benchmarks: `stages` columns of jobs, each depending on
/// one to three jobs of the previous one to three stages, picked by a fixed-seed generator.
pub fn sample_dag(tasks: usize, stages: usize, seed: u64) -> Vec<(usize, usize)> {
    let mut state = seed.max(1);
    let mut next = move || {
        // xorshift64: deterministic and dependency-free.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let per_stage = tasks.div_ceil(stages.max(1)).max(1);
    let mut edges = Vec::new();
    for v in per_stage..tasks {
        let stage = v / per_stage;
        let deps = 1 + (next() % 3) as usize;
        for _ in 0..deps {
            let back = 1 + (next() % 3) as usize;
            let from_stage = stage.saturating_sub(back);
            let u = from_stage * per_stage + (next() as usize % per_stage);
            if u < v && !edges.contains(&(u, v)) {
                edges.push((u, v));
            }
        }
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlaps(layout: &Layout, options: &Options) -> bool {
        let n = layout.nodes.len();
        for a in 0..n {
            for b in a + 1..n {
                let (p, q) = (layout.nodes[a], layout.nodes[b]);
                if (p.x - q.x).abs() < options.node_width
                    && (p.y - q.y).abs() < options.node_height + options.node_gap - 0.01
                {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn layers_follow_the_longest_path() {
        // a → b → c and a → c: c goes after b, not next to it.
        let layout = layout(3, &[(0, 1), (1, 2), (0, 2)], &Options::default());
        assert_eq!(layout.layers, vec![0, 1, 2]);
        assert!(layout.nodes[0].x < layout.nodes[1].x);
        assert!(layout.nodes[1].x < layout.nodes[2].x);
        // The long edge a → c passes column 1 through a dummy: 4 points.
        let long = layout
            .edges
            .iter()
            .find(|e| e.from == 0 && e.to == 2)
            .unwrap();
        assert_eq!(long.points.len(), 4);
    }

    #[test]
    fn every_edge_points_to_a_later_column_and_nodes_never_overlap() {
        let options = Options::default();
        let edges = sample_dag(400, 12, 7);
        let layout = layout(400, &edges, &options);
        for &(a, b) in &edges {
            assert!(layout.layers[a] < layout.layers[b], "{a} → {b}");
        }
        assert!(!overlaps(&layout, &options));
        assert!(layout.width > 0.0 && layout.height > 0.0);
    }

    #[test]
    fn crossing_reduction_untangles_a_twisted_bipartite_graph() {
        // Roots 0..4, children 4..8 wired in reverse: the initial order crosses every pair.
        let edges: Vec<_> = (0..4).map(|i| (i, 7 - i)).collect();
        let layout = layout(8, &edges, &Options::default());
        assert_eq!(layout.crossings, 0);
    }

    #[test]
    fn a_cycle_still_gives_a_layout() {
        let layout = layout(3, &[(0, 1), (1, 2), (2, 1)], &Options::default());
        assert_eq!(layout.nodes.len(), 3);
        assert_eq!(layout.edges.len(), 3);
    }

    #[test]
    fn crossings_are_counted_exactly() {
        let options = Options::default();
        let edges = [(0, 3), (1, 2)];
        let mut graph = LayeredGraph::new(4, &edges, &[0, 0, 1, 1], &options);
        // Force the twisted order 0,1 over 2,3.
        graph.order = vec![vec![0, 1], vec![2, 3]];
        graph.pos = vec![0, 1, 0, 1];
        assert_eq!(graph.crossings(), 1);
    }

    #[test]
    fn sample_dags_are_acyclic_and_deterministic() {
        let a = sample_dag(1000, 20, 3);
        assert_eq!(a, sample_dag(1000, 20, 3));
        assert!(a.iter().all(|&(u, v)| u < v));
    }
}
