//! Keeps the workspace's `rust-version` true: no lower than what any package of the locked
//! dependency graph declares (its `rust-version`, or the first release of its edition), on this
//! host and with `--cfg loom` (the loom build of `cargo xtask loom` pulls in more crates), and
//! the README says the same version.

use std::process::Command;

/// A JSON value, as much as `cargo metadata` needs.
#[derive(Debug)]
enum Json {
    Null,
    Bool,
    Number,
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
    fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// Parses one JSON value from the start of `b`; returns it and the rest.
fn parse(b: &[u8]) -> Result<(Json, &[u8]), String> {
    let b = skip_ws(b);
    let err = |what: &str| {
        format!(
            "bad JSON at {:?}: {what}",
            String::from_utf8_lossy(&b[..b.len().min(40)])
        )
    };
    match b.first() {
        Some(b'{') => {
            let mut fields = Vec::new();
            let mut rest = skip_ws(&b[1..]);
            if rest.first() == Some(&b'}') {
                return Ok((Json::Object(fields), &rest[1..]));
            }
            loop {
                let (key, r) = parse(rest)?;
                let Json::Str(key) = key else {
                    return Err(err("object key"));
                };
                let r = skip_ws(r);
                let Some(r) = r.strip_prefix(b":") else {
                    return Err(err("colon"));
                };
                let (value, r) = parse(r)?;
                fields.push((key, value));
                let r = skip_ws(r);
                match r.first() {
                    Some(b',') => rest = &r[1..],
                    Some(b'}') => return Ok((Json::Object(fields), &r[1..])),
                    _ => return Err(err("object end")),
                }
            }
        }
        Some(b'[') => {
            let mut items = Vec::new();
            let mut rest = skip_ws(&b[1..]);
            if rest.first() == Some(&b']') {
                return Ok((Json::Array(items), &rest[1..]));
            }
            loop {
                let (value, r) = parse(rest)?;
                items.push(value);
                let r = skip_ws(r);
                match r.first() {
                    Some(b',') => rest = &r[1..],
                    Some(b']') => return Ok((Json::Array(items), &r[1..])),
                    _ => return Err(err("array end")),
                }
            }
        }
        Some(b'"') => {
            let mut s = Vec::new();
            let mut i = 1;
            loop {
                match b.get(i) {
                    None => return Err(err("string end")),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        // Escapes never occur in the fields read here; keep them verbatim.
                        s.extend_from_slice(&b[i..i + 2]);
                        i += 2;
                    }
                    Some(&c) => {
                        s.push(c);
                        i += 1;
                    }
                }
            }
            Ok((
                Json::Str(String::from_utf8_lossy(&s).into_owned()),
                &b[i + 1..],
            ))
        }
        Some(b't') if b.starts_with(b"true") => Ok((Json::Bool, &b[4..])),
        Some(b'f') if b.starts_with(b"false") => Ok((Json::Bool, &b[5..])),
        Some(b'n') if b.starts_with(b"null") => Ok((Json::Null, &b[4..])),
        Some(c) if c.is_ascii_digit() || *c == b'-' => {
            let end = b
                .iter()
                .position(|c| !(c.is_ascii_digit() || b"-+.eE".contains(c)))
                .unwrap_or(b.len());
            Ok((Json::Number, &b[end..]))
        }
        _ => Err(err("value")),
    }
}

fn skip_ws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

/// `1.85.0` or `1.88` as comparable numbers.
fn version(v: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = v.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    parts.resize(3, 0);
    parts
}

/// The first Rust release of an edition.
fn edition_release(edition: &str) -> &'static str {
    match edition {
        "2015" => "1.0",
        "2018" => "1.31",
        "2021" => "1.56",
        "2024" => "1.85",
        other => panic!("unknown edition {other}: teach this test its first release"),
    }
}

fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

/// (rust version needed, package) of every dependency `cargo metadata` resolves for this
/// host (the workspace's own packages left out), with `rustflags` set as a build would set
/// them.
fn needed(rustflags: &str) -> Vec<(Vec<u64>, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
        ])
        .arg(host_triple())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("RUSTFLAGS", rustflags)
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (meta, _) = parse(&out.stdout).unwrap();
    let Some(Json::Array(packages)) = meta.get("packages") else {
        panic!("cargo metadata has no packages")
    };
    let Some(Json::Array(members)) = meta.get("workspace_members") else {
        panic!("cargo metadata has no workspace members")
    };
    let ours: Vec<&str> = members.iter().filter_map(Json::str).collect();
    packages
        .iter()
        .filter(|p| !ours.contains(&p.get("id").and_then(Json::str).unwrap_or("")))
        .map(|p| {
            let name = format!(
                "{} {}",
                p.get("name").and_then(Json::str).unwrap_or("?"),
                p.get("version").and_then(Json::str).unwrap_or("?")
            );
            let edition = version(edition_release(
                p.get("edition").and_then(Json::str).unwrap_or("2015"),
            ));
            let declared = p.get("rust_version").and_then(Json::str).map(version);
            (declared.unwrap_or_default().max(edition), name)
        })
        .collect()
}

#[test]
fn rust_version_is_what_the_locked_dependencies_need_and_the_readme_says_it() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml")).unwrap();
    let ours = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("the workspace declares rust-version");
    for rustflags in ["", "--cfg loom"] {
        let (most, who) = needed(rustflags)
            .into_iter()
            .max()
            .expect("cargo metadata lists packages");
        let most_text: Vec<String> = most.iter().map(u64::to_string).collect();
        let most_text = most_text.join(".");
        assert!(
            version(ours) >= most,
            "rust-version {ours} is too low: {who} (RUSTFLAGS={rustflags:?}) needs {most_text}; \
             raise rust-version in Cargo.toml and the README, or pin that package lower"
        );
        if rustflags.is_empty() {
            // Not higher than needed either, unless our own code needs more: then say so here.
            assert_eq!(
                version(ours),
                most,
                "rust-version {ours} is higher than any dependency needs ({who}: {most_text})"
            );
        }
    }
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(
        readme.contains(&format!("Rust toolchain (stable, {ours} or newer)")),
        "the README names another Rust version than Cargo.toml's {ours}"
    );
}
