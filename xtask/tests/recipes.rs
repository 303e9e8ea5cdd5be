//! The ready-made configurations of README "Running at scale", checked as far as this machine
//! allows: their YAML parses and hangs together, and their commands run here, with a small
//! bound, through this build's xtask, and merge. (What needs the real services, a GitHub runner,
//! a cluster or ClusterFuzzLite's image, is not run: scale/cflite-build-locally.sh runs the
//! ClusterFuzzLite build script on a workstation with nightly and cargo-fuzz.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use yaml_rust2::{Yaml, YamlLoader};

const XTASK: &str = env!("CARGO_BIN_EXE_xtask");
/// The bound the recipes run at here (theirs is 6: hours of work).
const LOCAL_BOUND: &str = "2";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn load(rel: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo().join(rel)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn text(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap()
}

fn s(y: &Yaml) -> String {
    match y {
        Yaml::String(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

/// A fresh directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wbcache-recipes-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("bin")).unwrap();
    // A `cargo` that runs this build's xtask for `cargo xtask ...` and refuses anything else.
    let shim = d.join("bin/cargo");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n[ \"$1\" = xtask ] || {{ echo \"recipe ran cargo $*\" >&2; exit 97; }}\n\
             shift\nexec '{XTASK}' \"$@\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// Runs a workflow's `run:` text with bash in `dir`, `cargo` being the shim.
fn bash(dir: &Path, script: &str) -> Output {
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap()
    );
    Command::new("bash")
        .args(["-eu", "-o", "pipefail", "-c", script])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("JOB_COMPLETION_INDEX")
        .output()
        .unwrap()
}

fn ok(what: &str, o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "{what}: {}\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn last_line(out: &str) -> String {
    out.lines().last().unwrap_or_default().to_string()
}

/// The verdict line one unsharded run of the local bound prints.
fn whole_run_line() -> String {
    let o = Command::new(XTASK)
        .args(["crash-test", "--bounded", LOCAL_BOUND])
        .output()
        .unwrap();
    last_line(&ok("the whole run", &o))
}

/// A merge's output: all the shards, and the verdict line one whole run prints.
fn merged_to_one_run(out: &str, shards: i64) {
    assert!(out.contains(&format!("merge: {shards} shard(s)")), "{out}");
    assert_eq!(
        last_line(out),
        whole_run_line(),
        "the merge sums to one run"
    );
}

fn step_runs(job: &Yaml) -> Vec<String> {
    job["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|st| st["run"].as_str().map(String::from))
        .collect()
}

#[test]
fn the_github_workflow_runs_its_shards_and_merges_them_here() {
    let wf = &load(".github/workflows/crash-test-shards.yml")[0];
    let shards: u64 = s(&wf["env"]["SHARDS"]).parse().unwrap();
    let matrix: Vec<u64> = wf["jobs"]["shard"]["strategy"]["matrix"]["shard"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|y| y.as_i64().unwrap() as u64)
        .collect();
    assert_eq!(
        matrix,
        (1..=shards).collect::<Vec<_>>(),
        "the matrix lists 1..=SHARDS"
    );
    let merge = &wf["jobs"]["merge"];
    assert_eq!(s(&merge["needs"]), "shard");
    assert_eq!(
        s(&merge["if"]),
        "always()",
        "the merge reports failing shards too"
    );
    let dir = scratch("gha");
    let shard_runs = step_runs(&wf["jobs"]["shard"]);
    assert_eq!(shard_runs.len(), 1, "{shard_runs:?}");
    let upload = wf["jobs"]["shard"]["steps"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|st| {
            st["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/upload-artifact"))
        })
        .expect("the shard job uploads its result");
    for m in matrix {
        let sub = |t: &str| {
            t.replace("${{ env.BOUND }}", LOCAL_BOUND)
                .replace("${{ env.SHARDS }}", &shards.to_string())
                .replace("${{ matrix.shard }}", &m.to_string())
        };
        let out = ok(&format!("shard {m}"), &bash(&dir, &sub(&shard_runs[0])));
        assert!(last_line(&out).contains("0 violations"), "{out}");
        let uploaded = sub(&s(&upload["with"]["path"]));
        assert!(
            dir.join(&uploaded).exists(),
            "shard {m} wrote no {uploaded}"
        );
    }
    let merge_runs = step_runs(merge);
    assert_eq!(merge_runs.len(), 1, "{merge_runs:?}");
    merged_to_one_run(&ok("merge", &bash(&dir, &merge_runs[0])), shards as i64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The container's command with Kubernetes' `$(VAR)` expanded from `env`.
fn expand(words: &[String], env: &[(String, String)]) -> Vec<String> {
    words
        .iter()
        .map(|w| {
            env.iter()
                .fold(w.clone(), |w, (k, v)| w.replace(&format!("$({k})"), v))
        })
        .collect()
}

fn container(job: &Yaml) -> &Yaml {
    let cs = job["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .unwrap();
    assert_eq!(cs.len(), 1);
    &cs[0]
}

fn command(c: &Yaml) -> Vec<String> {
    c["command"].as_vec().unwrap().iter().map(s).collect()
}

#[test]
fn the_kubernetes_job_runs_every_index_and_the_merge_job_merges_them_here() {
    let docs = load("scale/k8s/crash-test-job.yaml");
    let pvc = docs
        .iter()
        .find(|d| s(&d["kind"]) == "PersistentVolumeClaim")
        .unwrap();
    let job = docs.iter().find(|d| s(&d["kind"]) == "Job").unwrap();
    assert_eq!(s(&job["apiVersion"]), "batch/v1");
    let spec = &job["spec"];
    assert_eq!(s(&spec["completionMode"]), "Indexed");
    let c = container(job);
    let env: Vec<(String, String)> = c["env"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|e| (s(&e["name"]), s(&e["value"])))
        .collect();
    let var = |k: &str| env.iter().find(|e| e.0 == k).unwrap().1.clone();
    let shards: i64 = var("SHARDS").parse().unwrap();
    assert_eq!(spec["completions"].as_i64(), Some(shards));
    assert_eq!(spec["parallelism"].as_i64(), Some(shards));
    // The pod failure policy needs restartPolicy Never; it fails the Job on a finding (1) or
    // bad options (2) and retries anything else, such as 75, an interrupted run.
    assert_eq!(s(&spec["template"]["spec"]["restartPolicy"]), "Never");
    let rules = spec["podFailurePolicy"]["rules"].as_vec().unwrap();
    let fail: Vec<i64> = rules
        .iter()
        .find(|r| s(&r["action"]) == "FailJob")
        .map(|r| {
            r["onExitCodes"]["values"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        })
        .unwrap();
    assert_eq!(fail, [1, 2]);
    // The results volume is the claim above, mounted where the command writes.
    let claim = s(&pvc["metadata"]["name"]);
    let vol = &spec["template"]["spec"]["volumes"][0];
    assert_eq!(s(&vol["persistentVolumeClaim"]["claimName"]), claim);
    let mount = s(&c["volumeMounts"][0]["mountPath"]);
    // The image (scale/Dockerfile) builds the command's binary in the working directory.
    let dockerfile = text("scale/Dockerfile");
    assert!(dockerfile.contains(&format!("WORKDIR {}", s(&c["workingDir"]))));
    assert!(dockerfile.contains("cargo build --release --package xtask"));
    let cmd = command(c);
    assert_eq!(cmd[0], "target/release/xtask");

    let dir = scratch("k8s");
    let local = |w: &str| w.replace(&mount, &dir.display().to_string());
    for index in 0..shards {
        let mut env = env.clone();
        env.retain(|e| e.0 != "BOUND");
        env.push(("BOUND".into(), LOCAL_BOUND.into()));
        env.push(("JOB_COMPLETION_INDEX".into(), index.to_string()));
        let words: Vec<String> = expand(&cmd, &env).iter().map(|w| local(w)).collect();
        assert!(!words.iter().any(|w| w.contains("$(")), "{words:?}");
        let run = |extra: &[&str]| {
            Command::new(XTASK)
                .args(&words[1..])
                .args(extra)
                .env("JOB_COMPLETION_INDEX", index.to_string())
                .output()
                .unwrap()
        };
        if index == 0 {
            // A pod preempted part-way exits 75 having saved its result; its restart, the same
            // command, continues it.
            let cut = run(&["--interrupt-after", "3"]);
            assert_eq!(cut.status.code(), Some(75), "{cut:?}");
        }
        let out = ok(&format!("index {index}"), &run(&[]));
        assert!(last_line(&out).contains("0 violations"), "{out}");
    }
    let merge_job = &load("scale/k8s/crash-test-merge.yaml")[0];
    let mc = container(merge_job);
    assert_eq!(s(&mc["volumeMounts"][0]["mountPath"]), mount);
    let mcmd = command(mc);
    assert_eq!(mcmd[..2], ["sh", "-c"]);
    let script = local(&mcmd[2]).replace("target/release/xtask", XTASK);
    merged_to_one_run(&ok("merge job", &bash(&dir, &script)), shards);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_clusterfuzzlite_configuration_builds_every_fuzz_target() {
    assert_eq!(
        s(&load(".clusterfuzzlite/project.yaml")[0]["language"]),
        "rust"
    );
    let dockerfile = text(".clusterfuzzlite/Dockerfile");
    assert!(
        dockerfile.starts_with("# ")
            && dockerfile.contains("FROM gcr.io/oss-fuzz-base/base-builder-rust")
    );
    assert!(dockerfile.contains("COPY .clusterfuzzlite/build.sh $SRC/"));
    let syntax = Command::new("bash")
        .args([
            "-n",
            ".clusterfuzzlite/build.sh",
            "scale/cflite-build-locally.sh",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    ok("bash -n", &syntax);
    let build = text(".clusterfuzzlite/build.sh");
    assert!(build.contains("cargo fuzz list --fuzz-dir fuzz") && build.contains("$OUT"));
    // Every target cargo-fuzz lists (fuzz/Cargo.toml's bins) has a committed seed corpus.
    let manifest = text("fuzz/Cargo.toml");
    let targets: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "wbcache-fuzz")
        .collect();
    assert_eq!(targets.len(), 5, "{targets:?}");
    for t in &targets {
        let corpus = repo().join("fuzz/corpus").join(t);
        assert!(
            std::fs::read_dir(&corpus).is_ok_and(|mut d| d.next().is_some()),
            "{t}"
        );
    }
    // Code-change mode on pull requests, batch mode on a schedule.
    for (file, mode) in [
        ("cflite-pr.yml", "code-change"),
        ("cflite-batch.yml", "batch"),
    ] {
        let wf = &load(&format!(".github/workflows/{file}"))[0];
        let steps = wf["jobs"]["fuzz"]["steps"].as_vec().unwrap();
        let uses = |name: &str| {
            steps
                .iter()
                .find(|st| st["uses"].as_str().is_some_and(|u| u.contains(name)))
                .unwrap_or_else(|| panic!("{file}: no {name} step"))
        };
        assert_eq!(s(&uses("build_fuzzers")["with"]["language"]), "rust");
        assert_eq!(s(&uses("run_fuzzers")["with"]["mode"]), mode, "{file}");
    }
}
