//! Tidy: house rules that rustfmt and clippy do not check, run as a plain test so that
//! `cargo test` enforces them (STYLE.md item 40). Every Rust file of the workspace starts with
//! a `//!` comment saying what it is; no line is longer than 100 columns; no debugging macro
//! or fix-me marker lands; every `unsafe` block or impl is preceded by a `SAFETY:` comment.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn tidy_workspace_sources() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut files = Vec::new();
    for dir in [
        "core", "net", "state", "cluster", "api", "tools", "bench", "tests",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        root.display()
    );
    let mut problems = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read source");
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        if !text.starts_with("//!") {
            problems.push(format!("{rel}: does not start with a `//!` comment"));
        }
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let n = i + 1;
            if line.chars().count() > 100 {
                problems.push(format!("{rel}:{n}: longer than 100 columns"));
            }
            // Built from pieces so that this file does not trip its own checks.
            let (dbg, fixme) = (concat!("dbg", "!("), concat!("FIX", "ME"));
            if line.contains(dbg) {
                problems.push(format!("{rel}:{n}: leftover dbg!"));
            }
            if line.contains(fixme) {
                problems.push(format!("{rel}:{n}: leftover {fixme}"));
            }
            let code = line.split("//").next().unwrap_or("");
            let (block, imp) = (concat!("unsafe", " {"), concat!("unsafe", " impl"));
            let opens_unchecked = code.contains(block) || code.trim_start().starts_with(imp);
            if opens_unchecked {
                let start = i.saturating_sub(4);
                let documented = lines[start..i].iter().any(|l| l.contains("SAFETY:"));
                if !documented {
                    problems.push(format!("{rel}:{n}: unsafe without a SAFETY: comment"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "tidy found:\n{}", problems.join("\n"));
}
