//! Which webhook events a pipeline's `on:` accepts: branch filters with GitHub's glob
//! patterns.
//!
//! Patterns: `*` matches any characters but `/`, `**` any characters including `/`, `?`
//! one character but `/`; everything else is literal. In `branches`, a `!pattern` entry
//! excludes what earlier entries included, and the last matching entry decides.
//! Pure functions; the webhook service applies them.

use super::model::{BranchFilter, Triggers};

/// Whether `pattern` matches all of `name`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob(&p, &n)
}

fn glob(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') if p.get(1) == Some(&'*') => {
            let rest = &p[2..];
            (0..=n.len()).any(|i| glob(rest, &n[i..]))
        }
        Some('*') => {
            let rest = &p[1..];
            for i in 0..=n.len() {
                if glob(rest, &n[i..]) {
                    return true;
                }
                if n.get(i) == Some(&'/') {
                    break;
                }
            }
            false
        }
        Some('?') => n.first().is_some_and(|&c| c != '/') && glob(&p[1..], &n[1..]),
        Some(c) => n.first() == Some(c) && glob(&p[1..], &n[1..]),
    }
}

impl BranchFilter {
    /// Whether a branch name (without `refs/heads/`) passes the filter.
    pub fn accepts_branch(&self, branch: &str) -> bool {
        if !self.branches_ignore.is_empty() {
            return !self.branches_ignore.iter().any(|p| glob_match(p, branch));
        }
        if self.branches.is_empty() {
            return true;
        }
        let mut accepted = false;
        for p in &self.branches {
            match p.strip_prefix('!') {
                Some(neg) if glob_match(neg, branch) => accepted = false,
                Some(_) => {}
                None if glob_match(p, branch) => accepted = true,
                None => {}
            }
        }
        accepted
    }

    fn is_empty(&self) -> bool {
        self.branches.is_empty() && self.branches_ignore.is_empty()
    }
}

impl Triggers {
    /// A file without any `on:` trigger takes every push and pull request.
    fn declares_nothing(&self) -> bool {
        self.push.is_none() && self.pull_request.is_none() && self.schedule.is_empty()
    }

    /// Whether a push of `git_ref` (`refs/heads/…`, `refs/tags/…`) starts a run. A branch
    /// filter only passes branches: tag pushes run only without filters.
    pub fn accepts_push(&self, git_ref: &str) -> bool {
        if self.declares_nothing() {
            return true;
        }
        let Some(filter) = &self.push else {
            return false;
        };
        if filter.is_empty() {
            return true;
        }
        git_ref
            .strip_prefix("refs/heads/")
            .is_some_and(|b| filter.accepts_branch(b))
    }

    /// Whether a pull request targeting `base` (`refs/heads/…` or a bare branch name)
    /// starts a run; filters apply to the base branch, as on GitHub.
    pub fn accepts_pull_request(&self, base: Option<&str>) -> bool {
        if self.declares_nothing() {
            return true;
        }
        let Some(filter) = &self.pull_request else {
            return false;
        };
        if filter.is_empty() {
            return true;
        }
        base.map(|b| b.strip_prefix("refs/heads/").unwrap_or(b))
            .is_some_and(|b| filter.accepts_branch(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_like_github() {
        assert!(glob_match("main", "main"));
        assert!(!glob_match("main", "main2"));
        assert!(glob_match("release/*", "release/1.0"));
        assert!(!glob_match("release/*", "release/1.0/hotfix"));
        assert!(glob_match("release/**", "release/1.0/hotfix"));
        assert!(glob_match("**", "feature/x/y"));
        assert!(glob_match("*", "feature"));
        assert!(!glob_match("*", "feature/x"));
        assert!(glob_match("v?.*", "v1.2"));
        assert!(glob_match("**-rc", "a/b-rc"));
    }

    #[test]
    fn branch_filters() {
        let f = BranchFilter {
            branches: vec![
                "release/**".into(),
                "!release/**-alpha".into(),
                "main".into(),
            ],
            branches_ignore: vec![],
        };
        assert!(f.accepts_branch("main"));
        assert!(f.accepts_branch("release/1/x"));
        assert!(!f.accepts_branch("release/1-alpha"));
        assert!(!f.accepts_branch("feature/x"));
        let f = BranchFilter {
            branches: vec![],
            branches_ignore: vec!["dependabot/**".into()],
        };
        assert!(f.accepts_branch("main"));
        assert!(!f.accepts_branch("dependabot/npm/x"));
    }

    #[test]
    fn triggers_by_event() {
        let none = Triggers::default();
        assert!(none.accepts_push("refs/tags/v1") && none.accepts_pull_request(None));
        let t = Triggers {
            push: Some(BranchFilter {
                branches: vec!["main".into()],
                branches_ignore: vec![],
            }),
            pull_request: None,
            schedule: vec![],
        };
        assert!(t.accepts_push("refs/heads/main"));
        assert!(!t.accepts_push("refs/heads/feature/x"));
        assert!(!t.accepts_push("refs/tags/main"));
        assert!(!t.accepts_pull_request(Some("refs/heads/main")));
        let t = Triggers {
            push: Some(BranchFilter::default()),
            pull_request: Some(BranchFilter {
                branches: vec!["main".into()],
                branches_ignore: vec![],
            }),
            schedule: vec![],
        };
        assert!(t.accepts_push("refs/tags/v1"));
        assert!(t.accepts_pull_request(Some("refs/heads/main")));
        assert!(t.accepts_pull_request(Some("main")));
        assert!(!t.accepts_pull_request(Some("dev")));
        let only_cron = Triggers {
            schedule: vec!["0 * * * *".into()],
            ..Triggers::default()
        };
        assert!(!only_cron.accepts_push("refs/heads/main"));
    }
}
