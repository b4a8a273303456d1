//! The event record: one transition of a run, task or attempt as the log keeps it.

use serde::{Deserialize, Serialize};

use super::{Entity, RunState};

/// A committed event. `seq` is global and increases in commit order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub tenant_id: String,
    pub run_id: String,
    pub task_id: Option<String>,
    pub attempt_id: Option<String>,
    pub entity: Entity,
    pub entity_id: String,
    pub from: Option<String>,
    pub to: String,
    pub reason: String,
    pub node: String,
    pub details: Option<serde_json::Value>,
}

impl EventRecord {
    /// Whether this event is its run's last: the run entered a terminal state.
    pub fn ends_run(&self) -> bool {
        self.entity == Entity::Run && self.to.parse::<RunState>().is_ok_and(|s| s.is_terminal())
    }
}
