//! Human output: tables, durations, truncation; and JSON for `--json`.

use chrono::{DateTime, Utc};
use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;

/// A table with the project's look.
pub(crate) fn table<'a>(header: impl IntoIterator<Item = &'a str>) -> Table {
    let header: Vec<&str> = header.into_iter().collect();
    let mut t = Table::new();
    t.load_preset(presets::ASCII_MARKDOWN)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    t
}

/// The non-blank lines of `path` (standard input for `-`), each with its 1-based number, a
/// trailing `\r` dropped.
///
/// # Errors
/// The file (or standard input) cannot be read.
pub(crate) fn lines_of(path: &std::path::Path) -> anyhow::Result<Vec<(usize, String)>> {
    use anyhow::Context;
    let content = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    Ok(content
        .lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim_end_matches('\r').to_owned()))
        .filter(|(_, l)| !l.trim().is_empty())
        .collect())
}

/// Prints a value as pretty JSON.
pub(crate) fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// "3s ago", "5m ago", ...
pub(crate) fn ago(t: DateTime<Utc>) -> String {
    let s = (Utc::now() - t).num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// At most `n` characters of `s`, with an ellipsis when cut; newlines flattened.
pub(crate) fn clip(s: &str, n: usize) -> String {
    let flat = s.replace(['\n', '\r', '\t'], " ");
    if flat.chars().count() <= n {
        flat
    } else {
        let mut out: String = flat.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// An optional value, or "-".
pub(crate) fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_and_cuts_long() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdefghij", 5), "abcd…");
    }
}
