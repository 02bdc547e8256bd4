//! `aimarket gold add`: known-answer items for the coordinator to mix into leases.

use super::Ctx;
use crate::output;
use anyhow::Context;
use protocol::messages::{decode, ApiOp};
use protocol::policy::{GoldAddReply, GoldAddRequest, GoldItem};
use std::path::{Path, PathBuf};

/// Gold commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum GoldCommand {
    /// Store known-answer items from FILE (all or none; items already stored are skipped).
    Add(AddArgs),
}

/// `gold add` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct AddArgs {
    /// One item per line: a JSON object (text, answer, and type, labels, model,
    /// max_new_tokens as a task takes them), or the VADER study's ground-truth format
    /// (`id<TAB>mean rating<TAB>text`: a `sentiment` item, positive above 0, negative below,
    /// rating 0 skipped). `-` reads standard input.
    #[arg(long)]
    file: PathBuf,
    /// VADER lines: only sentences rated at least this far from neutral (|rating|), so the
    /// known answer is one people agree on.
    #[arg(long, default_value_t = 0.0)]
    min_rating: f64,
}

/// Items per `gold.add` request: well under NATS's default 1 MiB payload for sentences.
const BATCH: usize = 1000;

/// Runs a gold command.
pub(crate) async fn run(ctx: &Ctx, cmd: GoldCommand) -> anyhow::Result<()> {
    let GoldCommand::Add(args) = cmd;
    let items = read_items(&args.file, args.min_rating)?;
    let client = ctx.client().await?;
    let mut sum = GoldAddReply {
        added: 0,
        already_known: 0,
        total: 0,
    };
    for (i, chunk) in items.chunks(BATCH).enumerate() {
        let r: GoldAddReply = client
            .call(
                ApiOp::GoldAdd,
                &GoldAddRequest {
                    items: chunk.to_vec(),
                },
            )
            .await
            .with_context(|| {
                format!(
                    "adding items {}..{}",
                    i * BATCH + 1,
                    i * BATCH + chunk.len()
                )
            })?;
        sum.added += r.added;
        sum.already_known += r.already_known;
        sum.total = r.total;
    }
    if ctx.json {
        return output::json(&sum);
    }
    println!(
        "added {} gold items ({} already known); {} in all",
        sum.added, sum.already_known, sum.total
    );
    Ok(())
}

/// Reads gold items, one per non-empty line, JSON or VADER; the error names the line.
pub(crate) fn read_items(path: &Path, min_rating: f64) -> anyhow::Result<Vec<GoldItem>> {
    let mut items = Vec::new();
    for (n, line) in output::lines_of(path)? {
        let line = line.as_str();
        let at = || format!("{}:{n}", path.display());
        if line.trim_start().starts_with('{') {
            let item: GoldItem =
                decode(line.as_bytes()).with_context(|| format!("{}: not a gold item", at()))?;
            item.check_answer().with_context(at)?;
            items.push(item);
            continue;
        }
        match vader_line(line) {
            Some((text, rating)) if rating.abs() >= min_rating.max(f64::MIN_POSITIVE) => {
                items.push(GoldItem::sentiment(text, rating > 0.0));
            }
            Some(_) => {}
            None => anyhow::bail!(
                "{}: neither a JSON gold item nor `id<TAB>rating<TAB>text`",
                at()
            ),
        }
    }
    anyhow::ensure!(!items.is_empty(), "{} holds no gold items", path.display());
    Ok(items)
}

/// The text and mean rating of a VADER ground-truth line.
fn vader_line(line: &str) -> Option<(&str, f64)> {
    let mut cols = line.splitn(3, '\t');
    let (_, rating, text) = (cols.next()?, cols.next()?, cols.next()?);
    Some((text, rating.trim().parse().ok()?))
}

/// The rated sentences of a VADER ground-truth file: text and whether people rated it
/// positive (rating 0 and lines in no known shape skipped). `aimarket eval` scores models on
/// them.
pub(crate) fn read_rated(file: &Path) -> anyhow::Result<Vec<(String, bool)>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let rated: Vec<(String, bool)> = text
        .lines()
        .filter_map(vader_line)
        .filter(|(_, rating)| *rating != 0.0)
        .map(|(text, rating)| (text.to_owned(), rating > 0.0))
        .collect();
    anyhow::ensure!(
        !rated.is_empty(),
        "{} holds no rated sentences",
        file.display()
    );
    Ok(rated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::TaskType;

    fn file(content: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), content).expect("write");
        f
    }

    #[test]
    fn reads_vader_and_json_lines() {
        let f = file(
            "1_1\t2.5\tA great film.\n1_2\t0\tA film.\n1_3\t-0.4\tA dull film.\n\n\
             {\"text\":\"x\",\"type\":\"zero-shot\",\"labels\":[\"a\",\"b\"],\"answer\":\"b\"}\n",
        );
        let items = read_items(f.path(), 0.0).expect("read");
        assert_eq!(items.len(), 3);
        assert_eq!(
            (items[0].answer.as_str(), items[1].answer.as_str()),
            ("positive", "negative")
        );
        assert_eq!(items[2].task_type(), TaskType::zero_shot());
        let strong = read_items(f.path(), 1.0).expect("read");
        assert_eq!(strong.len(), 2, "the weakly rated sentence is left out");
    }

    #[test]
    fn a_bad_line_is_named() {
        let f = file("1_1\t2.5\tfine\n{\"text\":\"x\",\"answer\":\"neutral\"}\n");
        let e = read_items(f.path(), 0.0).expect_err("unknown label");
        assert!(format!("{e:#}").contains(":2"), "{e:#}");
        let f = file("just some text\n");
        assert!(read_items(f.path(), 0.0).is_err());
    }
}
