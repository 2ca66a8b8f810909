//! The documentation as a fresh clone has it: every relative link in every tracked Markdown file
//! resolves to a file (and, for a Markdown target, its `#anchor` to a heading) in the
//! repository; no Markdown file names a folder outside it; and the configuration table in
//! `docs/CONFIGURATION.md` lists exactly the variables and defaults of `chat_server::config::VARS`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use chat_server::config::VARS;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// The Markdown files git tracks; without git (an unpacked archive), every `.md` outside build
/// output and installed packages.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let listed = Command::new("git")
        .args(["ls-files", "-z", "--", "*.md"])
        .current_dir(root)
        .output();
    if let Ok(out) = listed
        && out.status.success()
    {
        return String::from_utf8_lossy(&out.stdout)
            .split('\0')
            .filter(|p| !p.is_empty())
            .map(|p| root.join(p))
            .filter(|p| p.is_file())
            .collect();
    }
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    dirs.push(path);
                }
            } else if name.ends_with(".md") {
                found.push(path);
            }
        }
    }
    found
}

/// Lines outside fenced code blocks, with inline code spans blanked (links in code are text).
fn prose(text: &str) -> Vec<String> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut out = String::with_capacity(line.len());
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                out.push(' ');
            } else {
                out.push(if in_code { ' ' } else { c });
            }
        }
        lines.push(out);
    }
    lines
}

/// The targets of inline links and images (`[text](target "title")`) and of reference
/// definitions (`[name]: target`).
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose(text) {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.trim_matches(['<', '>']).to_owned());
            rest = &after[end..];
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some((label, target)) = trimmed.split_once("]:")
            && !label.contains(' ')
            && let Some(t) = target.split_whitespace().next()
        {
            targets.push(t.to_owned());
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, spaces to `-`, punctuation other than `-` and `_`
/// dropped.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for line in text.lines().filter(|l| l.starts_with('#')) {
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    seen
}

fn is_external(target: &str) -> bool {
    target.is_empty()
        || target.contains("://")
        || target.starts_with("mailto:")
        || target.starts_with('#')
}

#[test]
fn every_relative_link_in_the_markdown_resolves_inside_the_repository() {
    let root = root();
    let files = markdown_files(&root);
    assert!(
        files.iter().any(|f| f.ends_with("README.md")),
        "no Markdown found under {}",
        root.display()
    );
    let canonical_root = root.canonicalize().unwrap();
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        for target in link_targets(&text) {
            if is_external(&target) {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if let Some(from_root) = path.strip_prefix('/') {
                root.join(from_root)
            } else {
                file.parent().unwrap().join(path)
            };
            let Ok(real) = resolved.canonicalize() else {
                broken.push(format!("{shown}: {target} (no such file)"));
                continue;
            };
            if !real.starts_with(&canonical_root) {
                broken.push(format!("{shown}: {target} (outside the repository)"));
                continue;
            }
            if let Some(anchor) = anchor
                && real.extension().is_some_and(|e| e == "md")
                && !anchors(&std::fs::read_to_string(&real).unwrap()).contains(anchor)
            {
                broken.push(format!("{shown}: {target} (no heading #{anchor})"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn no_markdown_names_a_folder_outside_the_repository() {
    let root = root();
    // Spelled in pieces so this file does not name it either.
    let outside = ["..", "shared"].join("/");
    let naming: Vec<String> = markdown_files(&root)
        .into_iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().contains(&outside))
        .map(|f| f.strip_prefix(&root).unwrap_or(&f).display().to_string())
        .collect();
    assert!(naming.is_empty(), "{outside} is named in {naming:?}");
}

/// Rows of every table headed `| variable | default | meaning |` in `text`: (name, default).
fn variable_tables(text: &str) -> Vec<Vec<(String, String)>> {
    let mut tables = Vec::new();
    let mut current: Option<Vec<(String, String)>> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("| variable | default |") {
            current = Some(Vec::new());
            continue;
        }
        let Some(rows) = current.as_mut() else {
            continue;
        };
        if !line.starts_with('|') {
            tables.extend(current.take());
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || cells[1].starts_with("---") {
            continue;
        }
        rows.push((cells[1].to_owned(), cells[2].to_owned()));
    }
    tables.extend(current);
    tables
}

#[test]
fn the_configuration_table_lists_exactly_the_variables_and_defaults_of_vars() {
    let root = root();
    let doc = std::fs::read_to_string(root.join("docs/CONFIGURATION.md")).unwrap();
    let tables = variable_tables(&doc);
    assert_eq!(
        tables.len(),
        1,
        "docs/CONFIGURATION.md has one variable table"
    );
    // README and the other docs link to it; a copy of the table elsewhere must match too.
    let mut all = tables;
    for file in markdown_files(&root) {
        if !file.ends_with("docs/CONFIGURATION.md") {
            all.extend(variable_tables(&std::fs::read_to_string(&file).unwrap()));
        }
    }
    for rows in all {
        let names: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
        let expected: Vec<String> = VARS.iter().map(|v| format!("`{}`", v.name)).collect();
        assert_eq!(names, expected, "the table's variables, in VARS's order");
        for ((name, default), var) in rows.iter().zip(VARS) {
            match var.default {
                Some(d) => assert_eq!(*default, format!("`{d}`"), "default of {name}"),
                None => assert!(
                    default.is_empty() || default.starts_with("unset"),
                    "{name} has no fixed default in VARS, so its cell starts with \"unset\": {default}"
                ),
            }
        }
    }
}

#[test]
fn the_link_reader_finds_inline_and_reference_links_but_not_code() {
    let text = "See [a](docs/A.md#x \"t\") and ![b](img.png).\n`[c](nope.md)`\n```\n[d](nope.md)\n```\n[e]: ref.md\n";
    assert_eq!(
        link_targets(text),
        vec!["docs/A.md#x", "img.png", "ref.md"],
        "links in code are text"
    );
    let a = anchors("# Title\n## The `chat-server` environment\n## Title\n");
    assert!(a.contains("title") && a.contains("title-1"));
    assert!(a.contains("the-chat-server-environment"), "{a:?}");
}
