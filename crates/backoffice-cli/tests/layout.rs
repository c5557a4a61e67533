//! The shape of the code, checked: which file may use which. The compiler
//! already forbids the engine crate from using the tasks crate (it does not
//! depend on it); these tests keep the rest of the layering true where the
//! compiler cannot: no engine file names a task's table or module, the
//! engine depends on none of the tasks' libraries, and the web front's
//! files import one way (`web/mod.rs`, `# Layout`).

use std::path::Path;

// ---- the engine knows no task ----

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
    }
    out
}

fn engine_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../backoffice")
}

/// No file of the engine crate names a task: not its module, not its
/// crate, not its tables. (Prose may say "hooks" or "alerts"; code may not
/// reach them.)
#[test]
fn no_engine_file_names_a_task() {
    let names = [
        "backoffice_tasks",
        "crate::notify",
        "crate::hooks",
        "crate::webhooks",
        "crate::replicate",
        "crate::maintain",
        "bo_hook",
        "bo_webhook",
        "bo_peer",
        "bo_outbox",
        "bo_subscriber",
    ];
    let mut found = Vec::new();
    for (file, text) in sources(&engine_dir().join("src")) {
        for (n, line) in text.lines().enumerate() {
            for name in names {
                if line.contains(name) {
                    found.push(format!("{file}:{}: {name}", n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "the engine names a task:\n{}",
        found.join("\n")
    );
}

/// The engine's dependencies stay small: none of the libraries only the
/// tasks need (`cargo tree -p backoffice` shows the same).
#[test]
fn the_engine_depends_on_none_of_the_tasks_libraries() {
    let manifest = std::fs::read_to_string(engine_dir().join("Cargo.toml")).unwrap();
    for dep in [
        "lettre",
        "ureq",
        "jiff",
        "hmac",
        "backoffice-tasks",
        "axum",
        "tokio",
    ] {
        assert!(
            !manifest.lines().any(|l| l.trim_start().starts_with(dep)),
            "crates/backoffice/Cargo.toml depends on {dep}"
        );
    }
}

// ---- the web front imports one way ----

/// The files of the web front, each with its layer in `# Layout`: a
/// file may use only files of a lower layer.
const LAYERS: &[(&str, u8, &str)] = &[
    ("store", 0, include_str!("../src/web/store.rs")),
    ("site", 1, include_str!("../src/web/site.rs")),
    ("clients", 1, include_str!("../src/web/clients.rs")),
    ("app", 2, include_str!("../src/web/app.rs")),
    ("respond", 3, include_str!("../src/web/respond.rs")),
    ("guard", 3, include_str!("../src/web/guard.rs")),
    ("session", 3, include_str!("../src/web/session.rs")),
    ("history", 3, include_str!("../src/web/history.rs")),
    ("pages", 4, include_str!("../src/web/pages.rs")),
    ("api", 4, include_str!("../src/web/api.rs")),
    ("metrics", 4, include_str!("../src/web/metrics.rs")),
    ("replica", 4, include_str!("../src/web/replica.rs")),
    ("signup", 4, include_str!("../src/web/signup.rs")),
    ("operate", 4, include_str!("../src/web/operate.rs")),
    ("router", 5, include_str!("../src/web/router.rs")),
    ("serve", 6, include_str!("../src/web/serve.rs")),
    ("cgi", 6, include_str!("../src/web/cgi.rs")),
];

/// The sibling names one file's code reaches through `super::` or
/// `crate::web::` (comments skipped), groups (`super::{a, b}`) included.
fn siblings(src: &str) -> Vec<String> {
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = Vec::new();
    for prefix in ["super::", "crate::web::"] {
        for (at, _) in code.match_indices(prefix) {
            let rest = &code[at + prefix.len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    let group = &group[..group.find('}').unwrap_or(group.len())];
                    names.extend(group.split(',').map(ident).filter(|n| !n.is_empty()));
                }
                None => names.push(ident(rest)),
            }
        }
    }
    names
}

/// The one-way rule of `# Layout`: no file uses a file of its own or a
/// higher layer (so no route imports the router or another route), and
/// none goes round it through a re-export of `mod.rs`.
#[test]
fn imports_point_one_way() {
    let mut wrong = Vec::new();
    for (file, layer, src) in LAYERS {
        for name in siblings(src) {
            match LAYERS.iter().find(|(f, _, _)| *f == name) {
                Some((_, l, _)) if l < layer => {}
                Some(_) => wrong.push(format!("{file}.rs uses {name}.rs, not below it")),
                None => wrong.push(format!(
                    "{file}.rs uses `{name}` of web/mod.rs; name its file instead"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every file of the web front has its layer in [`LAYERS`], so a new
/// file cannot escape the rule.
#[test]
fn every_file_has_a_layer() {
    let declared: Vec<&str> = include_str!("../src/web/mod.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ").or(l.strip_prefix("mod ")))
        .filter_map(|l| l.strip_suffix(';'))
        .collect();
    assert!(declared.len() >= LAYERS.len(), "{declared:?}");
    for m in declared {
        assert!(
            LAYERS.iter().any(|(f, _, _)| *f == m),
            "web/{m}.rs has no layer in LAYERS (and no place in # Layout)"
        );
    }
}

// ---- the README's embedding example is compiled ----

/// The README's "From a Rust host" code is `examples/embed.rs`, which
/// `cargo test` builds: the example in the README cannot stop compiling.
#[test]
fn the_readme_embedding_example_is_this_file() {
    let readme = include_str!("../../../README.md");
    let at = readme.find("### From a Rust host").expect("the section");
    let start = readme[at..].find("```rust\n").expect("a rust block") + at + "```rust\n".len();
    let end = readme[start..].find("```\n").expect("its end") + start;
    let example = include_str!("../examples/embed.rs");
    let code = &example[example.find("// ---- README ----\n").expect("the marker") + 20..];
    assert_eq!(
        &readme[start..end],
        code,
        "README and examples/embed.rs differ"
    );
}
