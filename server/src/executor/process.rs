//! Running one process to completion under the attempt's deadline and
//! cancellation token, with guaranteed clean-up of its whole process group.
//!
//! Owns spawning (own process group, null stdin, piped output), streaming the
//! output into the log sink, and the kill sequence (SIGTERM to the group,
//! grace period, SIGKILL). It is separate because "no process outlives its
//! step" is the hardest invariant of the executor and deserves one small,
//! auditable place. It must not decide what a process *means*: exit codes,
//! markers and outcomes belong to the caller.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::executor::error::ExecError;
use crate::executor::logs::LogSink;
use crate::executor::{LogStream, ResourceLimits};

/// How often we look whether a signalled process group has emptied. There is
/// no event for "the last member of a group died", so this is a poll.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// After SIGKILL, how long we wait for the kernel to finish tearing down the
/// group (delivery of SIGKILL and exit are asynchronous).
const KILL_SETTLE: Duration = Duration::from_secs(2);

/// How long output may keep trickling in after the group is gone. Only a
/// process that escaped the group (setsid) can still hold our pipes open; we
/// stop listening to it rather than hang the attempt.
const READER_DRAIN: Duration = Duration::from_secs(2);

/// Reads accepted after the drain period, so an escaped process that writes
/// continuously cannot keep us reading forever.
const MAX_READS_AFTER_DRAIN: usize = 16;

const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Shared per-attempt state every process runs under.
pub(crate) struct RunContext<'a> {
    pub(crate) logs: &'a LogSink,
    pub(crate) cancel: &'a CancellationToken,
    pub(crate) deadline: Instant,
    pub(crate) kill_grace: Duration,
}

/// Why a process was stopped by us rather than finishing on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interruption {
    Timeout,
    Cancelled,
}

/// How the group leader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Termination {
    Exited(i32),
    Signaled(i32),
}

impl From<ExitStatus> for Termination {
    fn from(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Self::Exited(code),
            (None, Some(signal)) => Self::Signaled(signal),
            // Unix guarantees one of the two for a reaped child; report it as
            // a failure rather than pretend success.
            (None, None) => Self::Exited(-1),
        }
    }
}

#[derive(Debug)]
pub(crate) struct ProcessEnd {
    pub(crate) termination: Termination,
    /// Set when the deadline or the cancel token ended the process.
    pub(crate) interrupted: Option<Interruption>,
    /// The leader exited but left members of its group running, which we killed.
    pub(crate) stragglers_killed: bool,
}

/// Applies rlimits in the child between fork and exec.
pub(crate) fn apply_limits(cmd: &mut Command, limits: &ResourceLimits) {
    let wanted = [
        (libc::RLIMIT_CPU, limits.cpu_seconds),
        (libc::RLIMIT_AS, limits.address_space_bytes),
        (libc::RLIMIT_NOFILE, limits.open_files),
        (libc::RLIMIT_FSIZE, limits.file_size_bytes),
    ];
    if wanted.iter().all(|(_, v)| v.is_none()) {
        return;
    }
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe functions are allowed. It only calls getrlimit and
    // setrlimit (plain syscalls), reads a stack array captured by value, and
    // builds an io::Error from errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            for (resource, value) in wanted {
                let Some(value) = value else { continue };
                let mut current = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(resource, &mut current) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // An unprivileged process cannot raise its hard limit; asking
                // for more than the host allows means "as much as allowed".
                let value = (value as libc::rlim_t).min(current.rlim_max);
                let limit = libc::rlimit {
                    rlim_cur: value,
                    rlim_max: value,
                };
                if libc::setrlimit(resource, &limit) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` in its own process group, streams its output and waits for
/// it, the deadline or cancellation, whichever comes first. On return no
/// member of the process group is left alive (barring processes that left the
/// group themselves).
pub(crate) async fn run_process(
    mut cmd: Command,
    what: &str,
    ctx: &RunContext<'_>,
) -> Result<ProcessEnd, ExecError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
        what: what.to_owned(),
        source,
    })?;
    let Some(pgid) = child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()) else {
        // A freshly spawned, unreaped child always has a pid that fits pid_t.
        let _ = child.start_kill();
        return Err(ExecError::Internal(format!("no pid for spawned {what}")));
    };
    // If this future is dropped mid-flight (the caller gave up on us), the
    // guard still takes the whole group down.
    let mut guard = GroupGuard { pgid, armed: true };

    let stop_reading = CancellationToken::new();
    let readers = [
        child
            .stdout
            .take()
            .map(|r| spawn_pump(r, LogStream::Stdout, ctx.logs, &stop_reading)),
        child
            .stderr
            .take()
            .map(|r| spawn_pump(r, LogStream::Stderr, ctx.logs, &stop_reading)),
    ];

    let waited = tokio::select! {
        // Prefer a real exit status over an interruption that raced with it.
        biased;
        status = child.wait() => Ok(status),
        _ = ctx.cancel.cancelled() => Err(Interruption::Cancelled),
        _ = sleep_until(ctx.deadline) => Err(Interruption::Timeout),
    };

    let mut stragglers_killed = false;
    let (status, interrupted) = match waited {
        Ok(status) => {
            // The leader is gone; anything it started in the background would
            // otherwise keep running (and keep our pipes open) forever.
            if group_alive(pgid) {
                stragglers_killed = true;
                let _ = terminate_group(pgid, &mut child, ctx.kill_grace).await;
            }
            (status, None)
        }
        Err(interruption) => {
            let status = terminate_group(pgid, &mut child, ctx.kill_grace).await;
            (status, Some(interruption))
        }
    };
    guard.armed = false;

    drain_readers(readers, &stop_reading).await;

    let status = status.map_err(|source| ExecError::Wait {
        what: what.to_owned(),
        source,
    })?;
    Ok(ProcessEnd {
        termination: status.into(),
        interrupted,
        stragglers_killed,
    })
}

/// SIGTERM the group, give it `grace` to exit, SIGKILL whatever is left, and
/// reap the leader.
async fn terminate_group(
    pgid: libc::pid_t,
    child: &mut Child,
    grace: Duration,
) -> io::Result<ExitStatus> {
    signal_group(pgid, libc::SIGTERM);
    let grace_end = Instant::now() + grace;
    // Reaping the leader as soon as it exits matters: until we do, it is a
    // zombie that keeps the group "alive" and would cost the full grace.
    let _ = timeout_at(grace_end, child.wait()).await;
    while group_alive(pgid) && Instant::now() < grace_end {
        sleep(GROUP_POLL.min(grace_end - Instant::now())).await;
    }
    if group_alive(pgid) {
        signal_group(pgid, libc::SIGKILL);
    }
    let status = child.wait().await;
    let settle_end = Instant::now() + KILL_SETTLE;
    while group_alive(pgid) && Instant::now() < settle_end {
        sleep(GROUP_POLL).await;
    }
    status
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: killpg has no memory-safety preconditions. ESRCH (group already
    // empty) is the expected, harmless failure.
    unsafe {
        libc::killpg(pgid, signal);
    }
}

/// Whether any member of the group is still running. Zombies do not count:
/// members orphaned by the leader's death are reaped by init, on init's
/// schedule, and waiting for that would only add latency (they can no longer
/// run anything).
fn group_alive(pgid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only performs the existence/permission check.
    let rc = unsafe { libc::kill(-pgid, 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    live_member_in_proc(pgid).unwrap_or(true)
}

/// Scans /proc for a non-zombie process in group `pgid`; `None` if /proc is
/// unavailable, in which case the caller must assume the worst.
fn live_member_in_proc(pgid: libc::pid_t) -> Option<bool> {
    let pgid = pgid.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // The process may vanish between listing and reading; that is fine.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Format: "pid (comm) state ppid pgrp ...". comm may contain spaces
        // and parentheses, so parse from the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(_ppid), Some(pgrp)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if pgrp == pgid && state != "Z" && state != "X" {
            return Some(true);
        }
    }
    Some(false)
}

/// Kills the process group if the owning future is dropped before it could
/// clean up itself.
struct GroupGuard {
    pgid: libc::pid_t,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
        }
    }
}

fn spawn_pump<R>(
    reader: R,
    stream: LogStream,
    logs: &LogSink,
    stop: &CancellationToken,
) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(pump(reader, stream, logs.clone(), stop.clone()))
}

/// Copies one pipe into the log sink as data arrives, line-buffered so masking
/// sees whole lines.
async fn pump<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: LogStream,
    logs: LogSink,
    stop: CancellationToken,
) {
    let mut lines = logs.line_buffer();
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut reads_after_stop = 0;
    loop {
        let read = tokio::select! {
            // Data already in the pipe wins over the stop request, so output
            // written just before exit is never dropped.
            biased;
            read = reader.read(&mut buf) => read,
            _ = stop.cancelled() => break,
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(text) = lines.push(&buf[..n]) {
            logs.send_masked(stream, text).await;
        }
        if stop.is_cancelled() {
            reads_after_stop += 1;
            if reads_after_stop >= MAX_READS_AFTER_DRAIN {
                break;
            }
        }
    }
    if let Some(text) = lines.finish() {
        logs.send_masked(stream, text).await;
    }
}

async fn drain_readers(readers: [Option<JoinHandle<()>>; 2], stop: &CancellationToken) {
    let all = async {
        for handle in readers.into_iter().flatten() {
            // A panicking pump only loses log lines; it must not fail the step.
            let _ = handle.await;
        }
    };
    tokio::pin!(all);
    if timeout(READER_DRAIN, &mut all).await.is_err() {
        stop.cancel();
        all.await;
    }
}
