//! Log streaming and secret masking.
//!
//! Owns the path from raw pipe bytes to `LogChunk`s on the caller's channel:
//! line buffering, secret masking and lossy UTF-8 conversion. It is separate
//! because masking is a security boundary: every byte a job prints must pass
//! through exactly one place that guarantees a secret is never emitted, even
//! when a `read` splits it in two. This module must not interpret output (no
//! marker parsing, no exit-code logic) and must never block on anything but
//! the caller's channel.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::executor::{LogChunk, LogStream};

/// What a masked secret is replaced by.
const MASK: &[u8] = b"***";

/// Output without a newline is held back at most this long before being
/// flushed anyway, so a job printing one endless line still streams and
/// cannot grow our memory without bound.
const MAX_PENDING_BYTES: usize = 64 * 1024;

/// Replaces secret values with `***`.
#[derive(Debug, Default)]
pub(crate) struct Masker {
    /// Longest first, so that when one secret contains another the longer one
    /// is masked as a whole instead of leaving a recognisable remainder.
    needles: Vec<Vec<u8>>,
    max_len: usize,
}

impl Masker {
    pub(crate) fn new(secrets: &[String]) -> Self {
        // Output is buffered by line, so a multi-line secret can never be seen
        // whole; masking each of its lines separately is what guarantees none
        // of it leaks.
        let mut needles: Vec<Vec<u8>> = secrets
            .iter()
            .flat_map(|s| s.split('\n'))
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .filter(|line| !line.is_empty())
            .map(|line| line.as_bytes().to_vec())
            .collect();
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        needles.dedup();
        let max_len = needles.first().map_or(0, Vec::len);
        Self { needles, max_len }
    }

    fn match_at(&self, bytes: &[u8], at: usize) -> Option<usize> {
        self.needles
            .iter()
            .find(|n| bytes[at..].starts_with(n))
            .map(Vec::len)
    }

    pub(crate) fn mask(&self, bytes: &[u8]) -> Vec<u8> {
        if self.needles.is_empty() {
            return bytes.to_vec();
        }
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match self.match_at(bytes, i) {
                Some(len) => {
                    out.extend_from_slice(MASK);
                    i += len;
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        out
    }

    pub(crate) fn mask_str(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.mask(text.as_bytes())).into_owned()
    }

    /// End of a secret occurrence that straddles `cut`, if any, using the same
    /// left-to-right scan as `mask` so both agree on where secrets are.
    fn occurrence_straddling(&self, bytes: &[u8], cut: usize) -> Option<usize> {
        let mut i = 0;
        while i < cut {
            match self.match_at(bytes, i) {
                Some(len) if i + len > cut => return Some(i + len),
                Some(len) => i += len,
                None => i += 1,
            }
        }
        None
    }
}

/// Per-stream buffer that only releases whole lines (or, for very long lines,
/// a prefix that provably does not end inside a secret).
pub(crate) struct LineBuffer {
    pending: Vec<u8>,
    masker: Arc<Masker>,
}

impl LineBuffer {
    pub(crate) fn new(masker: Arc<Masker>) -> Self {
        Self {
            pending: Vec::new(),
            masker,
        }
    }

    /// Feeds freshly read bytes; returns masked text that is safe to emit now.
    pub(crate) fn push(&mut self, data: &[u8]) -> Option<String> {
        self.pending.extend_from_slice(data);
        let cut = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(newline) => newline + 1,
            None if self.pending.len() > MAX_PENDING_BYTES => self.partial_cut()?,
            None => return None,
        };
        let rest = self.pending.split_off(cut);
        let ready = std::mem::replace(&mut self.pending, rest);
        Some(self.render(&ready))
    }

    /// Flushes whatever is left at end of stream.
    pub(crate) fn finish(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let ready = std::mem::take(&mut self.pending);
        Some(self.render(&ready))
    }

    /// Where to split an over-long line. We keep back enough bytes that a
    /// secret which has only partly arrived cannot be cut, and never cut
    /// through a secret that is already complete.
    fn partial_cut(&self) -> Option<usize> {
        let len = self.pending.len();
        let mut cut = len - self.masker.max_len.saturating_sub(1).min(len);
        // Avoid splitting a UTF-8 sequence, which would turn one character
        // into two replacement characters. A sequence has at most 3
        // continuation bytes.
        for _ in 0..3 {
            if cut > 0 && cut < len && self.pending[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
        }
        if let Some(end) = self.masker.occurrence_straddling(&self.pending, cut) {
            cut = end;
        }
        (cut > 0).then_some(cut)
    }

    fn render(&self, bytes: &[u8]) -> String {
        String::from_utf8_lossy(&self.masker.mask(bytes)).into_owned()
    }
}

/// The caller's log channel plus the masking every chunk must go through.
#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::Sender<LogChunk>,
    masker: Arc<Masker>,
}

impl LogSink {
    pub(crate) fn new(tx: mpsc::Sender<LogChunk>, secrets: &[String]) -> Self {
        Self {
            tx,
            masker: Arc::new(Masker::new(secrets)),
        }
    }

    pub(crate) fn line_buffer(&self) -> LineBuffer {
        LineBuffer::new(Arc::clone(&self.masker))
    }

    /// Sends text that has already been masked by a `LineBuffer`.
    pub(crate) async fn send_masked(&self, stream: LogStream, data: String) {
        // A caller that stopped listening must not fail the job: logs are an
        // observation, and cancellation has its own token.
        let _ = self.tx.send(LogChunk { stream, data }).await;
    }

    /// Sends an executor-authored line. Still masked: it may quote step names
    /// or error messages that embed user-controlled text.
    pub(crate) async fn system(&self, text: &str) {
        let data = self.masker.mask_str(text);
        self.send_masked(LogStream::System, data).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(secrets: &[&str]) -> LineBuffer {
        let secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
        LineBuffer::new(Arc::new(Masker::new(&secrets)))
    }

    #[test]
    fn secret_split_across_reads_is_masked() {
        let mut lb = buffer(&["supersecret"]);
        assert_eq!(lb.push(b"token=sup"), None);
        assert_eq!(
            lb.push(b"ersecret ok\nnext "),
            Some("token=*** ok\n".into())
        );
        assert_eq!(lb.finish(), Some("next ".into()));
    }

    #[test]
    fn longest_secret_wins_and_multiline_secrets_mask_per_line() {
        let m = Masker::new(&["abc".into(), "abcdef".into(), "l1\r\nl2".into()]);
        assert_eq!(m.mask_str("xabcdefx abc l1 l2"), "x***x *** *** ***");
    }

    #[test]
    fn overlong_line_is_flushed_without_cutting_a_secret() {
        let mut lb = buffer(&["0123456789"]);
        let mut data = vec![b'a'; MAX_PENDING_BYTES - 5];
        data.extend_from_slice(b"0123456789");
        let first = lb.push(&data).unwrap_or_default();
        let rest = lb.finish().unwrap_or_default();
        let all = format!("{first}{rest}");
        assert!(!all.contains("0123456789"));
        assert!(all.ends_with("***"));
    }

    #[test]
    fn overlong_line_keeps_a_possible_secret_prefix_back() {
        let mut lb = buffer(&["0123456789"]);
        let mut data = vec![b'a'; MAX_PENDING_BYTES];
        data.extend_from_slice(b"01234");
        let first = lb.push(&data).unwrap_or_default();
        assert!(!first.contains("01234"));
        let second = lb.push(b"56789\n").unwrap_or_default();
        assert!(second.ends_with("a***\n"), "{second}");
    }
}
