//! Delivery in commit order: turns committed batches of events, which may reach a node out
//! of order (two transactions on one node publishing after their commits, or two nodes
//! publishing through Redis), into one gap-free stream in `seq` order.
//!
//! Every transaction that appends events does it under one database-wide lock (see
//! `store::events::append_ordered`), and records the highest `seq` committed before its
//! own: its `prev`. Batches therefore form a chain, `prev` of one being the last `seq` of the
//! one committed before it. A batch whose `prev` is the last delivered `seq` is delivered at
//! once; a later one waits here until the chain reaches it — or, when a link was lost (a
//! node died between commit and publish, Redis dropped a message), until the node reads the
//! missing events from the log. This module holds only the pure bookkeeping: no I/O.

use std::collections::BTreeMap;

use crate::domain::EventRecord;

/// The ordering state of one node's live feed.
#[derive(Debug, Default)]
pub struct Sequencer {
    /// Highest `seq` delivered; everything committed up to it was delivered once.
    delivered: i64,
    /// False until the starting point is known (the log's last `seq` at start); until
    /// then batches are trusted to arrive in order.
    known: bool,
    /// Batches that arrived before the batch they follow, by their `prev`.
    pending: BTreeMap<i64, Vec<EventRecord>>,
}

impl Sequencer {
    /// Sets the starting point: the last `seq` committed before this node listened.
    pub fn start_at(&mut self, last_seq: i64) {
        if !self.known {
            self.delivered = self.delivered.max(last_seq);
            self.known = true;
        }
    }

    pub fn delivered(&self) -> i64 {
        self.delivered
    }

    /// True when a batch waits for one that has not arrived.
    pub fn has_gap(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Offers a committed batch; returns what can be delivered now, in order. `prev` is
    /// the last `seq` committed before the batch (None: unknown, trust the arrival order).
    pub fn offer(&mut self, prev: Option<i64>, events: Vec<EventRecord>) -> Vec<EventRecord> {
        let Some(last) = events.last().map(|e| e.seq) else {
            return Vec::new();
        };
        if last <= self.delivered {
            return Vec::new();
        }
        let mut out = Vec::new();
        match prev {
            Some(p) if self.known && p > self.delivered => {
                self.pending.insert(p, events);
                return out;
            }
            _ => self.take(events, &mut out),
        }
        self.drain(&mut out);
        out
    }

    /// Fills from the log: `events` are every committed event after `delivered()`, in
    /// order, as read from the database. Returns what to deliver.
    pub fn fill(&mut self, events: Vec<EventRecord>) -> Vec<EventRecord> {
        let mut out = Vec::new();
        self.take(events, &mut out);
        self.drain(&mut out);
        out
    }

    fn take(&mut self, events: Vec<EventRecord>, out: &mut Vec<EventRecord>) {
        for e in events {
            if e.seq > self.delivered {
                self.delivered = e.seq;
                out.push(e);
            }
        }
    }

    fn drain(&mut self, out: &mut Vec<EventRecord>) {
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() > self.delivered {
                break;
            }
            let batch = entry.remove();
            self.take(batch, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Entity;

    fn ev(seq: i64) -> EventRecord {
        EventRecord {
            seq,
            at_ms: 0,
            tenant_id: "t".into(),
            run_id: "r".into(),
            task_id: None,
            attempt_id: None,
            entity: Entity::Run,
            entity_id: "r".into(),
            from: None,
            to: "running".into(),
            reason: String::new(),
            node: "n".into(),
            details: None,
        }
    }

    fn seqs(v: &[EventRecord]) -> Vec<i64> {
        v.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_batch_that_arrives_early_waits_for_the_one_committed_before_it() {
        let mut s = Sequencer::default();
        s.start_at(10);
        assert!(s.offer(Some(12), vec![ev(13), ev(14)]).is_empty());
        assert!(s.has_gap());
        assert_eq!(
            seqs(&s.offer(Some(10), vec![ev(11), ev(12)])),
            [11, 12, 13, 14]
        );
        assert!(!s.has_gap());
    }

    #[test]
    fn duplicates_and_old_batches_are_dropped() {
        let mut s = Sequencer::default();
        s.start_at(10);
        assert_eq!(seqs(&s.offer(Some(10), vec![ev(11)])), [11]);
        assert!(s.offer(Some(10), vec![ev(11)]).is_empty());
        assert!(s.offer(Some(3), vec![ev(4)]).is_empty());
    }

    #[test]
    fn a_rolled_back_seq_is_no_gap_because_prev_skips_it() {
        let mut s = Sequencer::default();
        s.start_at(10);
        // seq 11 was allocated by a transaction that rolled back: the next batch's prev is
        // 10, the last committed seq.
        assert_eq!(seqs(&s.offer(Some(10), vec![ev(12)])), [12]);
    }

    #[test]
    fn a_lost_batch_is_filled_from_the_log() {
        let mut s = Sequencer::default();
        s.start_at(10);
        assert!(s.offer(Some(11), vec![ev(12)]).is_empty());
        assert_eq!(seqs(&s.fill(vec![ev(11), ev(12)])), [11, 12]);
        assert!(!s.has_gap());
        assert_eq!(s.delivered(), 12);
    }

    #[test]
    fn before_the_start_is_known_arrival_order_is_trusted() {
        let mut s = Sequencer::default();
        assert_eq!(seqs(&s.offer(Some(40), vec![ev(41)])), [41]);
        assert_eq!(seqs(&s.offer(None, vec![ev(42)])), [42]);
    }
}
