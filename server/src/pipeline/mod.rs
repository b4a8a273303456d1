//! Pipeline files: parsing GitHub-Actions-like YAML into validated specs and
//! planning those specs into concrete tasks for one run.
//!
//! This module owns the public entry points ([`parse`], [`plan`]), the
//! layer's error type and its limits. It must not perform I/O, schedule or
//! execute anything; it turns text into data and data into data.

pub mod cron;
pub mod duration;
pub mod expr;
pub mod filter;
pub mod matrix;
pub mod model;
pub mod plan;
mod schema;
mod yaml;

use serde::{Deserialize, Serialize};

pub use expr::{Condition, EvalContext, ExprError, JobStatus, should_run};
pub use model::*;
pub use plan::plan;

/// Files above this size are refused before parsing, to bound work.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Most tasks one matrix job may expand into.
pub const MAX_MATRIX_JOBS: usize = 256;
/// Most tasks a whole pipeline may expand into.
pub const MAX_TOTAL_TASKS: usize = 1000;

/// A problem in a pipeline file, positioned at 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{line}:{column}: {message}{}", hint_suffix(.hint))]
pub struct PipelineError {
    pub line: u32,
    pub column: u32,
    pub message: String,
    /// What to do about it; may be empty.
    pub hint: String,
}

fn hint_suffix(hint: &str) -> String {
    if hint.is_empty() {
        String::new()
    } else {
        format!(" ({hint})")
    }
}

impl PipelineError {
    pub fn new(
        line: u32,
        column: u32,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Self {
            line,
            column,
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Parses and fully validates a pipeline file: syntax, schema, expressions,
/// matrix sizes and the job graph. All problems found are returned, sorted
/// by position.
pub fn parse(text: &str) -> Result<PipelineFile, Vec<PipelineError>> {
    schema::parse_file(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FRAGMENTS: &[&str] = &[
        "jobs:",
        "\n",
        "  ",
        "    ",
        "- ",
        "run: ",
        "uses: ",
        "actions/checkout@v4",
        "needs: ",
        "steps:",
        "strategy:",
        "matrix:",
        "include:",
        "exclude:",
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "a",
        "b",
        "${{",
        "}}",
        "matrix.a",
        "env.X",
        "&x ",
        "*x",
        "'",
        "\"",
        "if: ",
        "success()",
        "&&",
        "||",
        "!",
        "1",
        "true",
        "~",
        "retry:",
        "backoff:",
        "1m30s",
        "timeout-minutes: ",
        "0.5",
        "cache: ",
        "false",
        "#",
        "---",
        "\t",
        "é",
        "on:",
        "push",
        "runs-on: ",
        "env:",
    ];

    fn yamlish() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..80)
            .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("GANTRY_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
        ))]

        #[test]
        fn parse_never_panics_on_arbitrary_text(text in "\\PC{0,300}") {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_yamlish_text(text in yamlish()) {
            if let Ok(file) = parse(&text) {
                let ctx = PlanContext { repository: "r".into(), sha: "s".into(), r#ref: "f".into(), run_number: 1 };
                // Anything that parses must also plan.
                prop_assert!(plan(&file, &ctx).is_ok());
            }
        }

        #[test]
        fn generated_pipelines_parse_and_plan_in_dependency_order(
            edges in proptest::collection::vec((0usize..12, 0usize..12), 0..30),
            shards in 1usize..4,
        ) {
            let mut text = String::from("jobs:\n");
            for j in 0..12 {
                let needs: Vec<String> = edges.iter().filter(|(a, b)| *a == j && b < a).map(|(_, b)| format!("j{b}")).collect();
                text.push_str(&format!("  j{j}:\n    needs: [{}]\n", needs.join(", ")));
                if j % 3 == 0 {
                    let values: Vec<String> = (0..shards).map(|s| s.to_string()).collect();
                    text.push_str(&format!("    strategy: {{matrix: {{s: [{}]}}}}\n", values.join(", ")));
                    text.push_str("    steps: [{run: \"echo ${{ matrix.s }}\"}]\n");
                } else {
                    text.push_str("    steps: [{run: echo}]\n");
                }
            }
            let file = parse(&text).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let ctx = PlanContext { repository: "r".into(), sha: "s".into(), r#ref: "f".into(), run_number: 1 };
            let tasks = plan(&file, &ctx).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            let mut seen = std::collections::BTreeSet::new();
            for t in &tasks {
                for n in &t.needs {
                    prop_assert!(seen.contains(n), "{} needs {} which comes later", t.name, n);
                }
                prop_assert!(seen.insert(t.name.clone()), "duplicate task {}", t.name);
            }
        }
    }

    #[test]
    fn error_display_format() {
        let e = PipelineError::new(3, 7, "bad thing", "do this");
        assert_eq!(e.to_string(), "3:7: bad thing (do this)");
        assert_eq!(PipelineError::new(1, 1, "x", "").to_string(), "1:1: x");
    }
}
