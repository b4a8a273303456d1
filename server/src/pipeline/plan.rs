//! Planning: turning a validated [`PipelineFile`] into the concrete tasks of
//! one run, with matrices expanded and `${{ }}` substitutions applied.
//!
//! This module owns task naming, needs expansion across matrix tasks, env
//! layering and the variables handed to condition evaluation. It must not
//! evaluate `if:` conditions (they depend on outcomes of earlier tasks) and
//! must not schedule anything. It re-checks limits and the graph because a
//! spec may have been reloaded from storage rather than freshly parsed.

use std::collections::BTreeMap;

use crate::domain::dag::{self, DagError};
use crate::pipeline::expr;
use crate::pipeline::matrix::{self, Combination};
use crate::pipeline::model::{
    JobSpec, PipelineFile, PlanContext, PlannedTask, StepKind, StepSpec, TriggerSpec,
};
use crate::pipeline::{MAX_TOTAL_TASKS, PipelineError};

type Vars = BTreeMap<String, String>;

struct Substituter<'a> {
    job: &'a JobSpec,
    errors: &'a mut Vec<PipelineError>,
}

impl Substituter<'_> {
    fn apply(&mut self, what: &str, template: &str, vars: &Vars) -> String {
        expr::substitute(template, vars).unwrap_or_else(|e| {
            self.errors.push(PipelineError::new(
                self.job.line,
                1,
                format!("job `{}`: {what}: {}", self.job.id, e.message),
                "",
            ));
            String::new()
        })
    }

    fn opt(&mut self, what: &str, template: Option<&String>, vars: &Vars) -> Option<String> {
        template.map(|t| self.apply(what, t, vars))
    }

    fn env(
        &mut self,
        what: &str,
        env: &BTreeMap<String, String>,
        vars: &Vars,
    ) -> BTreeMap<String, String> {
        env.iter()
            .map(|(k, v)| {
                // Env values may name secrets: they become markers, resolved at lease time.
                let secrets: Vec<String> = expr::template_variables(v)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(n, _)| n.strip_prefix("secrets.").map(str::to_owned))
                    .collect();
                let value = if secrets.is_empty() {
                    self.apply(&format!("{what} `{k}`"), v, vars)
                } else {
                    let mut with = vars.clone();
                    for name in secrets {
                        with.insert(format!("secrets.{name}"), expr::secret_marker(&name));
                    }
                    self.apply(&format!("{what} `{k}`"), v, &with)
                };
                (k.clone(), value)
            })
            .collect()
    }
}

fn task_name(job: &JobSpec, combo: &Combination) -> String {
    if job.matrix.is_some() {
        format!("{} ({})", job.id, matrix::combination_label(combo))
    } else {
        job.id.clone()
    }
}

fn with_env(vars: &Vars, env: &BTreeMap<String, String>) -> Vars {
    let mut out = vars.clone();
    out.extend(env.iter().map(|(k, v)| (format!("env.{k}"), v.clone())));
    out
}

/// Expands every job into tasks for the run described by `ctx`.
///
/// Tasks come out in file order of their jobs, and in matrix order within a
/// job; `needs` always point at tasks that appear earlier in the graph.
pub fn plan(
    file: &PipelineFile,
    ctx: &PlanContext,
) -> Result<Vec<PlannedTask>, Vec<PipelineError>> {
    let mut errors = Vec::new();
    let nodes: Vec<(String, Vec<String>)> = file
        .jobs
        .iter()
        .map(|j| (j.id.clone(), j.needs.clone()))
        .collect();
    if let Err(e) = dag::topo_order(&nodes) {
        let name = match &e {
            DagError::Cycle(names) => names.first(),
            DagError::MissingNeed { node, .. } => Some(node),
            DagError::Duplicate(name) => Some(name),
        };
        let line = file
            .jobs
            .iter()
            .find(|j| Some(&j.id) == name)
            .map_or(1, |j| j.line);
        errors.push(PipelineError::new(line, 1, e.to_string(), ""));
        return Err(errors);
    }

    let mut combos: Vec<Vec<Combination>> = Vec::with_capacity(file.jobs.len());
    for job in &file.jobs {
        match &job.matrix {
            None => combos.push(vec![Combination::new()]),
            Some(m) => match matrix::expand(m) {
                Ok(c) => combos.push(c),
                Err(msg) => {
                    errors.push(PipelineError::new(
                        job.line,
                        1,
                        format!("job `{}`: {msg}", job.id),
                        "",
                    ));
                    combos.push(Vec::new());
                }
            },
        }
    }
    let total: usize = combos.iter().map(Vec::len).sum();
    if total > MAX_TOTAL_TASKS {
        errors.push(PipelineError::new(
            1,
            1,
            format!("pipeline expands to {total} tasks, more than the limit of {MAX_TOTAL_TASKS}"),
            "",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let names_by_job: BTreeMap<&str, Vec<String>> = file
        .jobs
        .iter()
        .zip(&combos)
        .map(|(job, cs)| {
            (
                job.id.as_str(),
                cs.iter().map(|c| task_name(job, c)).collect(),
            )
        })
        .collect();

    let base: Vars = ctx.vars();

    let mut tasks = Vec::with_capacity(total);
    for (job, job_combos) in file.jobs.iter().zip(&combos) {
        let mut s = Substituter {
            job,
            errors: &mut errors,
        };
        let top_env = s.env("env", &file.env, &base);
        let needs: Vec<String> = job
            .needs
            .iter()
            .flat_map(|n| names_by_job.get(n.as_str()).cloned().unwrap_or_default())
            .collect();
        for combo in job_combos {
            let mut matrix_vars = base.clone();
            matrix_vars.extend(
                combo
                    .iter()
                    .map(|(k, v)| (format!("matrix.{k}"), matrix::value_text(v))),
            );
            let job_env = s.env("env", &job.env, &with_env(&matrix_vars, &top_env));
            let mut env = top_env.clone();
            env.extend(job_env);
            let vars = with_env(&matrix_vars, &env);

            let name = task_name(job, combo);
            let display_name = match &job.name {
                None => name.clone(),
                Some(n) => {
                    let rendered = s.apply("name", n, &vars);
                    // A name that already interpolates matrix values would
                    // only repeat them with a suffix.
                    if job.matrix.is_some() && !n.contains("${{") {
                        format!("{rendered} ({})", matrix::combination_label(combo))
                    } else {
                        rendered
                    }
                }
            };
            let steps = job
                .steps
                .iter()
                .map(|step| plan_step(&mut s, step, &vars))
                .collect();
            let trigger = job.trigger.as_ref().map(|t| TriggerSpec {
                pipeline: t.pipeline.clone(),
                r#ref: s.opt("trigger.ref", t.r#ref.as_ref(), &vars),
                wait: t.wait,
            });
            tasks.push(PlannedTask {
                trigger,
                name,
                job_id: job.id.clone(),
                display_name,
                matrix: combo.clone(),
                needs: needs.clone(),
                queue: s.apply("runs-on", &job.runs_on, &vars),
                labels: job
                    .labels
                    .iter()
                    .map(|l| s.apply("runs-on", l, &vars))
                    .collect(),
                condition: job.condition.clone(),
                continue_on_error: job.continue_on_error,
                timeout_ms: job.timeout_ms,
                retry: job.retry.clone(),
                cache: job.cache,
                env,
                steps,
                artifacts: job
                    .artifacts
                    .iter()
                    .map(|a| s.apply("artifacts", a, &vars))
                    .collect(),
                vars,
            });
        }
    }
    if errors.is_empty() {
        Ok(tasks)
    } else {
        Err(errors)
    }
}

fn plan_step(s: &mut Substituter<'_>, step: &StepSpec, job_vars: &Vars) -> StepSpec {
    let env = s.env("step env", &step.env, job_vars);
    let vars = with_env(job_vars, &env);
    let kind = match &step.kind {
        StepKind::Run { script, shell } => StepKind::Run {
            script: s.apply("run", script, &vars),
            shell: shell.clone(),
        },
        StepKind::Checkout => StepKind::Checkout,
        StepKind::UploadArtifact { name, path } => StepKind::UploadArtifact {
            name: s.apply("with.name", name, &vars),
            path: s.apply("with.path", path, &vars),
        },
        StepKind::DownloadArtifact { name, path } => StepKind::DownloadArtifact {
            name: s.opt("with.name", name.as_ref(), &vars),
            path: s.opt("with.path", path.as_ref(), &vars),
        },
        StepKind::Cache { key, path } => StepKind::Cache {
            key: s.apply("with.key", key, &vars),
            path: s.apply("with.path", path, &vars),
        },
    };
    StepSpec {
        name: s.opt("step name", step.name.as_ref(), &vars),
        kind,
        env,
        working_directory: s.opt("working-directory", step.working_directory.as_ref(), &vars),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::model::{CacheSpec, RetryOn, RetrySpec};
    use crate::pipeline::schema::tests::FULL;
    use crate::pipeline::{JobStatus, parse, should_run};

    fn ctx() -> PlanContext {
        PlanContext {
            repository: "acme/app".into(),
            sha: "abc123".into(),
            r#ref: "refs/heads/main".into(),
            run_number: 7,
        }
    }

    fn names(tasks: &[PlannedTask]) -> Vec<&str> {
        tasks.iter().map(|t| t.name.as_str()).collect()
    }

    #[test]
    fn full_file_plans() {
        let file = parse(FULL).unwrap();
        let tasks = plan(&file, &ctx()).unwrap();
        assert_eq!(
            names(&tasks),
            [
                "build",
                "test (shard=1)",
                "test (shard=3)",
                "test (shard=4)",
                "test (extra=x, shard=5)"
            ]
        );
        let build = &tasks[0];
        assert_eq!(build.display_name, "Build");
        assert!(build.needs.is_empty());
        assert_eq!(
            (build.queue.as_str(), build.labels.len()),
            ("linux-large", 0)
        );
        assert_eq!(build.timeout_ms, 1_200_000);
        assert_eq!(build.retry.max_attempts, 3);
        assert_eq!(
            build.retry.on,
            vec![RetryOn::Lost, RetryOn::Infra, RetryOn::Timeout]
        );
        assert_eq!(
            build.cache,
            CacheSpec {
                enabled: true,
                ttl_ms: 86_400_000
            }
        );
        let env: Vec<(&str, &str)> = build
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(env, [("A", "b"), ("CARGO_TERM_COLOR", "always")]);
        assert_eq!(build.vars["env.A"], "b");
        assert_eq!(build.vars["run.number"], "7");
        assert_eq!(
            build.condition.as_deref(),
            Some("success() && ref == 'refs/heads/main'")
        );
        assert_eq!(build.steps[1].env["X"], "y");
        assert_eq!(build.artifacts, vec!["target/release/app".to_string()]);

        let t1 = &tasks[1];
        assert_eq!(t1.job_id, "test");
        assert_eq!(t1.display_name, "test (shard=1)");
        assert_eq!(t1.needs, vec!["build".to_string()]);
        assert_eq!(
            (t1.queue.as_str(), t1.labels.clone()),
            ("linux", vec!["gpu".to_string(), "big".to_string()])
        );
        assert_eq!(t1.timeout_ms, 3_000);
        assert_eq!(t1.retry, RetrySpec::default());
        assert_eq!(t1.matrix["shard"], serde_json::json!(1));
        assert_eq!(t1.vars["matrix.shard"], "1");
        assert_eq!(t1.vars["ref"], "refs/heads/main");
        assert_eq!(
            t1.steps[0].kind,
            StepKind::Run {
                script: "./ci/test.sh 1 always".into(),
                shell: None
            }
        );
        assert_eq!(tasks[4].vars["matrix.extra"], "x");

        let ok = JobStatus {
            needs_all_succeeded: true,
            needs_any_failed: false,
            run_cancelled: false,
        };
        assert!(should_run(build.condition.as_deref(), &build.vars, ok));
        let mut other = build.vars.clone();
        other.insert("ref".into(), "refs/heads/dev".into());
        assert!(!should_run(build.condition.as_deref(), &other, ok));

        let group = expr::substitute(&file.concurrency.unwrap().group, &build.vars).unwrap();
        assert_eq!(group, "ci-refs/heads/main");
        let json = serde_json::to_string(&tasks).unwrap();
        assert_eq!(
            serde_json::from_str::<Vec<PlannedTask>>(&json).unwrap(),
            tasks
        );
    }

    #[test]
    fn needs_expand_to_all_matrix_tasks_and_templates_render() {
        let text = r#"
env: { BASE: /opt }
jobs:
  compile:
    name: "Compile on ${{ matrix.os }}"
    runs-on: ["${{ matrix.os }}", "${{ matrix.os }}-big"]
    strategy: { matrix: { os: [linux, mac], flag: [true] } }
    env: { TOOLS: "${{ env.BASE }}/${{ matrix.os }}" }
    steps:
      - name: "build ${{ env.TOOLS }}"
        env: { OUT: "${{ env.TOOLS }}/out" }
        run: make OUT=${{ env.OUT }} REV=${{ github.sha }}
      - uses: actions/cache@v4
        with: { key: "deps-${{ matrix.os }}", path: "${{ env.TOOLS }}" }
  ship:
    name: Ship
    needs: [compile]
    steps: [{run: "echo ${{ repository }}#${{ run.number }}"}]
"#;
        let tasks = plan(&parse(text).unwrap(), &ctx()).unwrap();
        assert_eq!(
            names(&tasks),
            [
                "compile (flag=true, os=linux)",
                "compile (flag=true, os=mac)",
                "ship"
            ]
        );
        let c = &tasks[0];
        assert_eq!(c.display_name, "Compile on linux");
        assert_eq!(
            (c.queue.as_str(), c.labels.clone()),
            ("linux", vec!["linux-big".to_string()])
        );
        assert_eq!(c.env["TOOLS"], "/opt/linux");
        assert_eq!(c.steps[0].name.as_deref(), Some("build /opt/linux"));
        assert_eq!(c.steps[0].env["OUT"], "/opt/linux/out");
        assert_eq!(
            c.steps[0].kind,
            StepKind::Run {
                script: "make OUT=/opt/linux/out REV=abc123".into(),
                shell: None
            }
        );
        assert_eq!(
            c.steps[1].kind,
            StepKind::Cache {
                key: "deps-linux".into(),
                path: "/opt/linux".into()
            }
        );
        assert_eq!(
            tasks[2].needs,
            vec![
                "compile (flag=true, os=linux)".to_string(),
                "compile (flag=true, os=mac)".to_string()
            ]
        );
        assert_eq!(tasks[2].display_name, "Ship");
        assert_eq!(
            tasks[2].steps[0].kind,
            StepKind::Run {
                script: "echo acme/app#7".into(),
                shell: None
            }
        );
    }

    #[test]
    fn tampered_specs_are_rejected() {
        let mut file = parse(
            "jobs:\n  a:\n    steps: [{run: echo}]\n  b:\n    needs: a\n    steps: [{run: echo}]\n",
        )
        .unwrap();
        file.jobs[0].steps[0].kind = StepKind::Run {
            script: "${{ matrix.nope }}".into(),
            shell: None,
        };
        let errs = plan(&file, &ctx()).unwrap_err();
        assert_eq!(errs[0].line, 2);
        assert!(
            errs[0].message.contains("unknown variable `matrix.nope`"),
            "{errs:?}"
        );
        file.jobs[0].needs = vec!["b".into()];
        let errs = plan(&file, &ctx()).unwrap_err();
        assert_eq!(errs[0].to_string(), "2:1: cycle: a → b → a");
    }
}
