//! `--messages FILE`: a chat for `task add` and `infer`, as the OpenAI-compatible API takes it.
//! The file is a JSON list of `{"role","content"}` turns, or JSON lines of one turn each.

use anyhow::Context;
use protocol::chat::ChatMessage;
use std::path::Path;

/// The chat in `path` (`-` for stdin), checked.
///
/// # Errors
/// The file cannot be read, is neither a JSON list of turns nor JSON lines of turns, or the chat
/// is not valid (empty, a system turn after the first, ending on the assistant).
pub(crate) fn read(path: &Path) -> anyhow::Result<Vec<ChatMessage>> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading the chat from stdin")?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the chat in {}", path.display()))?
    };
    let messages = parse(&text).with_context(|| format!("the chat in {}", path.display()))?;
    protocol::chat::validate(&messages)?;
    Ok(messages)
}

/// A JSON list of turns, or JSON lines of one turn each (blank lines skipped).
fn parse(text: &str) -> anyhow::Result<Vec<ChatMessage>> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).context("not a JSON list of {role, content} turns");
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("line {}: not a {{role, content}} turn", i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::chat::Role;

    #[test]
    fn a_list_and_json_lines_give_the_same_chat() {
        let list = r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]"#;
        let lines = "{\"role\":\"system\",\"content\":\"Be brief.\"}\n\n{\"role\":\"user\",\"content\":\"Hi\"}\n";
        let a = parse(list).expect("list");
        assert_eq!(a, parse(lines).expect("lines"));
        assert_eq!(a[1], ChatMessage::new(Role::User, "Hi"));
        assert!(parse("{\"role\":\"robot\",\"content\":\"x\"}").is_err());
        assert!(parse("[1, 2]").is_err());
    }
}
